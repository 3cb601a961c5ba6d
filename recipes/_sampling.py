"""The sampling flags of the recipes that draw from a prior: the grid, the sampler's levers
(temperature, top-k, top-p, classifier-free guidance) and the sample-quality draw."""

from __future__ import annotations

import argparse

from _defaults import non_negative_float, ranged
from _flags import RecipeError, non_negative_int, positive_int

# Nucleus mass: (0, 1].
unit_mass = ranged(float, 0.0, 1.0, low_open=True, invalid=("0", "1.5"))


def add_sampling_args(parser: argparse.ArgumentParser, num_samples: int = 64) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--num-samples", type=non_negative_int, default=num_samples, help="images in the grid"
    )
    group.add_argument(
        "--temperature", type=non_negative_float, default=1.0, help="prior temperature; 0: greedy"
    )
    group.add_argument(
        "--labels",
        default=None,
        help="class-conditional prior: one int, a comma list (cycled), or 'cycle' "
        "(0, 1, ..., K-1, 0, ...; also when unset)",
    )
    group.add_argument(
        "--sample-batch-size", type=positive_int, default=32, help="maps drawn per sampler call"
    )
    group.add_argument(
        "--quality-samples",
        type=non_negative_int,
        default=500,
        help="images drawn (every class in turn) to measure sample quality against --eval-split "
        "(FD, precision, recall, classifier scores; 32x32x1 images only); 0: off",
    )
    group.add_argument(
        "--top-k",
        type=positive_int,
        default=None,
        help="keep the k most likely codes (unset: all)",
    )
    group.add_argument(
        "--top-p",
        type=unit_mass,
        default=None,
        help="nucleus sampling: keep the likeliest codes up to this mass, in (0, 1] (1: all); "
        "train_prior saves it in the prior (unset: the prior's own, all unless one was saved)",
    )
    group.add_argument(
        "--guidance-scale",
        type=non_negative_float,
        default=None,
        help="classifier-free guidance scale s >= 0 (1: plain conditional, > 1: sharper "
        "classes); needs a prior trained with --conditional --label-dropout; train_prior saves "
        "it in the prior (unset: the prior's own, no guidance unless one was saved)",
    )


def sampling_options(args, prior) -> dict:
    """``--top-k``, ``--top-p`` and ``--guidance-scale`` checked against ``prior`` (a usage
    error if they do not fit it); the keyword arguments of ``generate``."""
    options = {"top_k": args.top_k, "top_p": args.top_p, "guidance_scale": args.guidance_scale}
    try:
        prior.sampling_options(**options)
    except (TypeError, ValueError) as error:
        raise RecipeError(f"--top-k/--top-p/--guidance-scale: {error}") from None
    return options


def sampling_record(args, prior) -> dict:
    """What the draws used: ``--temperature``, and ``top_k``, ``top_p``, ``guidance_scale``
    resolved by ``prior`` (its own defaults where a flag is unset), for metrics.json."""
    return {
        "temperature": args.temperature,
        **prior.sampling_options(**sampling_options(args, prior)),
    }
