"""Rebuild the presets bundled with keras_vq (keras_vq/presets/bundled/) with our own recipes.

Each preset is one recipe command: a short, seeded CPU run on the offline digits, trained on
TensorFlow. The recipe writes ``<work-dir>/<name>/preset/`` (config.json, model.weights.h5,
metadata.json with the held-out metrics and the exact command, reference.npz); this script
copies it into the package, naming the prior's VQ-VAE preset by its bundled name.

Example (from the repository root; a few minutes on two CPU cores):
    python recipes/build_presets.py
    python recipes/build_presets.py --only vae_digits --work-dir /tmp/presets
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "keras_vq" / "presets" / "bundled"
WORK_DIR = "runs/presets"
COMMON = "--backend tensorflow --seed 0 --verbose 2 --overwrite"

# name: (description, recipe command with {work} for --work-dir, or several in order, the last
# writing the preset). Order matters: the prior is trained on the VQ-VAE above it.
PRESETS = {
    "vqvae_digits": (
        "VQ-VAE on the 32x32 offline digits: 64 codes of size 16 on a 4x4 grid (EMA codebook), "
        "the main job's configuration, chosen for the samples of its prior",
        "recipes/train_vqvae.py --out {work}/vqvae_digits --epochs 15 --downsample 8 "
        "--num-embeddings 64 " + COMMON,
    ),
    "pixelcnn_digits": (
        "Class-conditional gated PixelCNN prior over the codes of vqvae_digits (10 classes), "
        "trained with label dropout on the codes of the digits and of two whole-pixel-shifted "
        "copies, then fine-tuned on the digits' codes; samples with classifier-free guidance "
        "(1.35) by default",
        (
            "recipes/train_prior.py --vqvae {work}/vqvae_digits/vqvae.keras "
            "--out {work}/pixelcnn_digits_shifted --conditional --label-dropout 0.1 "
            "--shifted-copies 2 --epochs 15 --num-samples 0 --quality-samples 0 " + COMMON,
            "recipes/train_prior.py --vqvae {work}/vqvae_digits/vqvae.keras "
            "--out {work}/pixelcnn_digits --conditional --label-dropout 0.1 --guidance-scale 1.35 "
            "--init-prior {work}/pixelcnn_digits_shifted/prior.keras --learning-rate 3e-4 "
            "--epochs 3 --num-samples 20 " + COMMON,
        ),
    ),
    "vae_digits": (
        "VAE on the 32x32 offline digits: 16 latent dimensions, Bernoulli likelihood",
        "recipes/train_vae.py --out {work}/vae_digits --epochs 15 " + COMMON,
    ),
    "digits_classifier": (
        "Digit classifier for 32x32x1 images in [0, 1] (small CNN, trained on the train split "
        "with random shifts): the default feature model of keras_vq.evaluation.sample_quality",
        "recipes/train_classifier.py --out {work}/digits_classifier --epochs 60 " + COMMON,
    ),
}
# Extra flags of --quick (a smoke test of the commands, not presets worth bundling).
QUICK = "--epochs 1 --steps-per-epoch 2"
QUICK_EXTRA = {
    "vqvae_digits": "--num-images 0",
    "pixelcnn_digits": "--num-samples 2 --quality-samples 8",
    "vae_digits": "--num-images 0 --num-samples 0 --iwae-samples 2",
    "digits_classifier": "--num-reference 20",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default=WORK_DIR, help="where the recipes run")
    parser.add_argument("--dest", default=str(DEST), help="where the presets are copied")
    parser.add_argument("--only", nargs="+", choices=sorted(PRESETS), help="build only these")
    parser.add_argument("--quick", action="store_true", help=f"append {QUICK!r} (smoke test)")
    return parser.parse_args(argv)


def commands(name: str, work_dir: str, quick: bool = False) -> list[list[str]]:
    """The recipe commands of preset ``name``, in order, run from the repository root; the
    last one writes the preset."""
    texts = PRESETS[name][1]
    texts = (texts,) if isinstance(texts, str) else texts
    extra = f" {QUICK} {QUICK_EXTRA[name]}" if quick else ""
    return [["python", *shlex.split(text.format(work=work_dir) + extra)] for text in texts]


def build(name: str, work_dir: str, dest: Path, quick: bool = False) -> Path:
    """Run the recipes of ``name``, then copy the preset of the last into ``dest/name``;
    returns that."""
    argvs = commands(name, work_dir, quick)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for argv in argvs:
        print(f"[{name}] {shlex.join(argv)}", flush=True)
        subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, env=env, check=True)
    source = ROOT / work_dir / name / "preset"
    metadata_path = source / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["description"] = PRESETS[name][0]
    metadata["recipe_command"] = shlex.join(argvs[-1])
    if len(argvs) > 1:  # what the last command starts from, in order
        metadata["earlier_recipe_commands"] = [shlex.join(argv) for argv in argvs[:-1]]
    if "vqvae_preset" in metadata:  # a relative path between run dirs -> the bundled name
        metadata["vqvae_preset"] = Path(metadata["vqvae_preset"]).parent.name
    metadata_path.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    target = dest / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    size = sum(p.stat().st_size for p in target.iterdir())
    print(f"[{name}] -> {target} ({size / 1e6:.2f} MB)", flush=True)
    return target


def main(argv=None) -> int:
    args = parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in args.only or PRESETS:
        build(name, args.work_dir, dest, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
