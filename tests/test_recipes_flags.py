"""The recipes' flags, checked in-process (``main(argv)``, no training): every prior class is
accepted, every flag is checked before ``--out`` is touched, and unset model flags leave the
model's own defaults in place."""

from __future__ import annotations

import json

import keras
import pytest

from tests.test_recipes import RECIPES

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the recipes run under KERAS_BACKEND=tensorflow; once per suite is enough",
)


@pytest.fixture
def recipes(monkeypatch):
    """The recipe modules, importable as ``python recipes/x.py`` imports its siblings."""
    monkeypatch.syspath_prepend(str(RECIPES))
    import importlib

    return lambda name: importlib.import_module(name)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny VQ-VAE (8x8 images, 4x4 codes, K=8) and a transformer prior of its codes,
    saved as .keras files."""
    from keras_vq.models import VQVAE, TransformerPrior

    root = tmp_path_factory.mktemp("tiny")
    vqvae = VQVAE(input_shape=(8, 8, 1), num_embeddings=8, embedding_dim=4, filters=(4,), seed=1)
    prior = TransformerPrior(8, (4, 4), num_layers=1, num_heads=2, hidden_dim=8)
    vqvae.save(root / "vqvae.keras")
    prior.save(root / "prior.keras")
    return root


def test_sample_accepts_a_transformer_prior(recipes, tiny_models, tmp_path):
    out = tmp_path / "sample"
    argv = [
        "--vqvae",
        str(tiny_models / "vqvae.keras"),
        "--prior",
        str(tiny_models / "prior.keras"),
    ]
    argv += ["--num-samples", "3", "--verbose", "0", "--out", str(out)]
    assert recipes("sample").main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 3 and metrics["image_shape"] == [8, 8, 1]
    assert (out / "samples.png").is_file()


# --------------------------------------------------------------------------- model defaults

RECIPE_MODULES = ("train_vqvae", "train_vae", "train_prior", "sample", "reconstruct", "pipeline")


def model_classes():
    from keras_vq.models import VAE, VQVAE, PixelCNNPrior, TransformerPrior

    return {
        "VQVAE": VQVAE,
        "VAE": VAE,
        "PixelCNNPrior": PixelCNNPrior,
        "TransformerPrior": TransformerPrior,
    }


def default_models():
    """Each model built with its required arguments only (32x32 images, 8x8 codes of 8)."""
    classes = model_classes()
    return {
        "VQVAE": classes["VQVAE"](input_shape=(32, 32, 1)),
        "VAE": classes["VAE"](input_shape=(32, 32, 1)),
        "PixelCNNPrior": classes["PixelCNNPrior"](8, (8, 8)),
        "TransformerPrior": classes["TransformerPrior"](8, (8, 8)),
    }


def model_flags(parser):
    """The parser's model flags: those whose help gives the model's default."""
    return [a for a in parser._actions if "unset: the model's default" in (a.help or "")]


def test_model_defaults_read_from_the_source_equal_the_signatures(recipes):
    import inspect

    defaults = recipes("_defaults")
    classes = model_classes()
    read = 0
    for (module, class_name), args in {
        ("models/vqvae.py", "VQVAE"): ("beta", "ema_decay", "dead_code_threshold"),
        ("models/vae.py", "VAE"): ("latent_dim", "likelihood", "beta"),
        ("models/pixelcnn.py", "PixelCNNPrior"): (
            "num_layers",
            "filters",
            "kernel_size",
            "label_dropout",
            "guidance_scale",
            "top_p",
        ),
        ("models/transformer.py", "TransformerPrior"): (
            "num_layers",
            "num_heads",
            "hidden_dim",
            "dropout",
            "label_dropout",
            "guidance_scale",
            "top_p",
        ),
    }.items():
        signature = inspect.signature(classes[class_name].__init__)
        for arg in args:
            default = signature.parameters[arg].default
            default = getattr(default, "value", default)  # VQVAE's Unset(value)
            assert defaults.model_default(module, class_name, arg) == default, (class_name, arg)
            read += 1
    assert read == 19


@pytest.mark.parametrize("name", (*RECIPE_MODULES[:3], "pipeline"))
def test_help_shows_the_default_each_model_uses(recipes, name):
    models = default_models()
    configs = {kind: model.get_config() for kind, model in models.items()}
    # flag dest -> (model, argument) for every model a flag goes to.
    where = {
        "train_vae": {d: [("VAE", d)] for d in ("latent_dim", "filters", "likelihood", "beta")},
    }.get(name, {})
    if name != "train_vae":
        vq = ("num_embeddings", "embedding_dim", "filters", "beta", "ema_decay")
        where = {d: [("VQVAE", d)] for d in (*vq, "dead_code_threshold", "downsample")}
        where.update(
            label_dropout=[("PixelCNNPrior", "label_dropout")],
            num_layers=[("PixelCNNPrior", "num_layers"), ("TransformerPrior", "num_layers")],
            prior_filters=[("PixelCNNPrior", "filters")],
            kernel_size=[("PixelCNNPrior", "kernel_size")],
            num_heads=[("TransformerPrior", "num_heads")],
            hidden_dim=[("TransformerPrior", "hidden_dim")],
            dropout=[("TransformerPrior", "dropout")],
        )
    flags = model_flags(recipes(name).build_parser())
    assert flags, name
    for action in flags:
        assert action.default is None, action.dest  # unset: nothing passed to the model
        for kind, arg in where[action.dest]:
            value = configs[kind][arg]
            shown = str(tuple(value) if isinstance(value, list) else value)
            assert f"{kind}: {shown}" in action.help or f"currently {shown}" in action.help, (
                action.dest,
                kind,
                action.help,
            )
    if name == "pipeline":  # the main job's own choices are the only flags it sets
        pipeline = recipes("pipeline")
        chosen = {**pipeline.GENERATION_DEFAULTS, **pipeline.CONDITIONAL_DEFAULTS}
        assert not {action.dest for action in flags} & set(chosen)
        parsed = vars(pipeline.build_parser().parse_args([]))
        assert {key: parsed[key] for key in chosen} == chosen
        unconditional = vars(pipeline.build_parser().parse_args(["--no-conditional"]))
        assert all(unconditional[key] is None for key in pipeline.CONDITIONAL_DEFAULTS)
    # --num-layers sets either prior's depth, and says each default.
    if name in ("train_prior", "pipeline"):
        (layers,) = [a for a in flags if a.dest == "num_layers"]
        for kind in ("PixelCNNPrior", "TransformerPrior"):
            assert f"{kind}: {configs[kind]['num_layers']}" in layers.help, layers.help


@pytest.mark.parametrize("name", RECIPE_MODULES)
def test_every_flag_with_a_default_shows_it_in_help(recipes, name):
    import argparse

    parser = recipes(name).build_parser()
    help_text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name} {action.option_strings[0]} has no help (hides its default)"
        default = action.default
        if default is not None and not isinstance(default, bool):
            assert f"(default: {default})" in help_text, (name, action.dest)


def comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("name", "trainable", "dtype")}


def test_unset_vqvae_and_vae_flags_build_the_default_models(recipes, tmp_path):
    """No model flag → the recipe passes the model nothing but its input shape and seed: the
    built model's configuration is a default-constructed one's, and args record it."""
    import keras_vq.models as models

    run = recipes("_rundir").Run(tmp_path / "out", {}, None)
    for name, model_class in (("train_vqvae", models.VQVAE), ("train_vae", models.VAE)):
        module = recipes(name)
        args = module.build_parser().parse_args(["--image-size", "8", "--batch-size", "16"])
        model = module.setup(args, run)["model"]
        expected = model_class(input_shape=(8, 8, 1), seed=0).get_config()
        assert comparable(model.get_config()) == comparable(expected), name
        for flag in module.MODEL_FLAGS:  # config.json records what the model used
            value = expected[flag]
            assert getattr(args, flag) == (list(value) if isinstance(value, tuple) else value)
    assert not run.out.exists()


@pytest.mark.parametrize("prior", ["pixelcnn", "transformer"])
def test_unset_prior_flags_build_the_default_prior(recipes, tiny_models, prior, tmp_path):
    import keras_vq
    import keras_vq.models as models

    module = recipes("train_prior")
    vqvae = keras_vq.saving.load_model(tiny_models / "vqvae.keras")
    args = module.build_parser().parse_args(["--prior", prior])
    run = recipes("_rundir").Run(tmp_path / "out", {}, None)
    built = module.build_prior(args, run, vqvae, num_classes=None)
    model_class = models.TransformerPrior if prior == "transformer" else models.PixelCNNPrior
    expected = model_class(8, (4, 4)).get_config()
    assert comparable(built.get_config()) == comparable(expected)
    for flag, arg in module.MODEL_FLAGS[prior].items():
        assert getattr(args, flag) == expected[arg]


def test_top_p_is_saved_in_the_trained_prior(recipes, tiny_models, tmp_path):
    """--top-p, like --guidance-scale, is the prior's own default: set, the prior stores it
    (1: every code, stored as None); unset, nothing is passed and None is recorded."""
    import keras_vq

    module = recipes("train_prior")
    vqvae = keras_vq.saving.load_model(tiny_models / "vqvae.keras")
    run = recipes("_rundir").Run(tmp_path / "out", {}, None)
    for prior in ("pixelcnn", "transformer"):
        for flags, stored, recorded in (([], None, None), (["--top-p", "0.9"], 0.9, 0.9)):
            args = module.build_parser().parse_args(["--prior", prior, *flags])
            built = module.build_prior(args, run, vqvae, num_classes=None)
            assert built.get_config()["top_p"] == stored and args.top_p == recorded, flags
        args = module.build_parser().parse_args(["--prior", prior, "--top-p", "1"])
        assert module.build_prior(args, run, vqvae, num_classes=None).top_p is None
        assert args.top_p == 1.0  # an explicit flag stays what it was
    # The pipeline hands --top-p to its prior stage, which stores it.
    pipeline = recipes("pipeline")
    assert "top_p" in pipeline.PRIOR_FLAGS
    args = pipeline.build_parser().parse_args(["--top-p", "0.95"])
    assert pipeline.prior_stage_args(args, tmp_path / "p", "v.keras").top_p == 0.95
    assert not run.out.exists()


def test_sample_takes_the_prior_top_p_unless_a_flag_overrides(recipes, tiny_models, tmp_path):
    from keras_vq.models import PixelCNNPrior

    prior_path = tmp_path / "nucleus.keras"
    PixelCNNPrior(8, (4, 4), num_layers=1, filters=4, top_p=0.5).save(prior_path)
    sample, sampling = recipes("sample"), recipes("_sampling")
    models = ["--vqvae", str(tiny_models / "vqvae.keras"), "--prior", str(prior_path)]
    run = recipes("_rundir").Run(tmp_path / "out", {}, None)

    def parse(*flags):
        return sample.build_parser().parse_args([*models, "--num-samples", "3", *flags])

    args = parse()
    prior = sample.setup(args, run)["prior"]

    def used_top_p(args):  # what the recipe's draws use, as metrics.json records it
        return sampling.sampling_record(args, prior)["top_p"]

    assert args.top_p is None and used_top_p(args) == 0.5  # unset: the prior's own
    assert used_top_p(parse("--top-p", "1")) is None and used_top_p(parse("--top-p", "0.7")) == 0.7
    # (generate with these options draws with the prior's own top_p: test_guidance.py.)
    assert not run.out.exists()


# --------------------------------------------------------------------------- invalid flags


def exit_status(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code


def numeric_flags(parser):
    """(flag, invalid value) for every flag that takes a number."""
    import argparse

    cases = []
    for action in parser._actions:
        if not action.option_strings or action.type is None or action.choices is not None:
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        # A bare int or float would accept -1 or nan: every numeric flag has a range.
        assert action.type not in (int, float), action.option_strings
        invalid = getattr(action.type, "invalid", ())
        assert invalid, f"{action.option_strings[0]}: {action.type} lists no invalid values"
        cases += [(action.option_strings[0], value) for value in invalid]
    return cases


@pytest.mark.parametrize("name", (*RECIPE_MODULES, "export"))
def test_every_numeric_flag_is_checked_before_anything_is_written(recipes, name, tmp_path, capsys):
    module = recipes(name)
    parser = module.build_parser() if name != "export" else export_parser(module)
    cases = numeric_flags(parser)
    assert len(cases) >= 3
    out = tmp_path / "out"
    base = {"sample": ["--vae", "v.keras"], "export": ["--model", "m.keras"]}.get(name, [])
    for flag, value in cases:
        status = exit_status(module.main, [*base, "--out", str(out), flag, value])
        lines = capsys.readouterr().err.strip().splitlines()
        assert status == 2, (flag, value)
        assert len(lines) == 1 and lines[0].startswith(f"error: argument {flag}"), lines
        assert not out.exists()


def export_parser(module):
    """export.py's parser (built inside its parse_args)."""
    import argparse

    captured = {}
    original = argparse.ArgumentParser.parse_args

    def capture(self, argv=None, namespace=None):
        captured["parser"] = self
        return original(self, ["--model", "m.keras"], namespace)

    argparse.ArgumentParser.parse_args = capture
    try:
        module.parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = original
    return captured["parser"]


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--temperature", "-1", "must be in [0.0, inf)"),
        ("--learning-rate", "-1", "must be in (0.0, inf)"),
        ("--learning-rate", "0", "must be in (0.0, inf)"),
        ("--seed", str(2**31), "must be in [0, 2147483647]"),
        ("--dropout", "1", "must be in [0.0, 1.0)"),
    ],
)
def test_train_prior_names_the_range_of_a_bad_flag(recipes, flag, value, message, capsys):
    status = exit_status(recipes("train_prior").main, ["--out", "/nonexistent/x", flag, value])
    assert status == 2 and message in capsys.readouterr().err


# --------------------------------------------------------------------------- resuming


def unfinished_run(recipes, out, name, argv, **saved_args):
    """An unfinished run of ``name`` in ``out``: its config.json, as written at its start."""
    module = recipes(name)
    args = module.build_parser().parse_args(argv)
    vars(args).update(saved_args)
    config = recipes("_rundir").make_config(name, args)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config))
    return config


def test_a_refused_resume_names_the_saved_values_and_overwrite(recipes, tmp_path, capsys):
    out = tmp_path / "vqvae"
    argv = ["--out", str(out), "--image-size", "8", "--batch-size", "16"]
    unfinished_run(recipes, out, "train_vqvae", argv)
    status = recipes("train_vqvae").main([*argv, "--learning-rate", "0.01"])
    error = capsys.readouterr().err
    assert status == 2 and "--learning-rate: 0.001 (saved) vs 0.01" in error
    assert "rerun with the saved values (--learning-rate 0.001)" in error
    assert "add --overwrite" in error
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_a_run_of_the_old_recipe_defaults_is_refused_with_its_values(recipes, tmp_path, capsys):
    """A run started when the recipe's own defaults were filters (32, 64) and EMA decay 0.99:
    rerun without those flags (now VQVAE's (32, 128) and 0.7) it is refused once the model
    is built, before anything is written, with the flags that finish it."""
    out = tmp_path / "vqvae"
    argv = ["--out", str(out), "--image-size", "8", "--batch-size", "16"]
    old = {"filters": [32, 64], "ema_decay": 0.99, "num_embeddings": 128, "embedding_dim": 16}
    config = unfinished_run(recipes, out, "train_vqvae", argv, beta=0.25, **old)
    config["args"]["dead_code_threshold"] = 1.0
    del config["args"]["downsample"]  # a flag added later: not compared
    (out / "config.json").write_text(json.dumps(config))
    before = (out / "config.json").read_text()
    status = recipes("train_vqvae").main(argv)
    error = capsys.readouterr().err
    assert status == 2
    assert "--filters: [32, 64] (saved) vs [32, 128]" in error
    assert "--ema-decay: 0.99 (saved) vs 0.7" in error
    assert "(--ema-decay 0.99, --filters 32 64)" in error
    assert (out / "config.json").read_text() == before
