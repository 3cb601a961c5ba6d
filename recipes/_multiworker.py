"""``--distribute multi_worker``: TensorFlow's ``MultiWorkerMirroredStrategy`` over the cluster
``TF_CONFIG`` describes. Nothing here imports Keras or TensorFlow at import time.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from _defaults import RecipeError

# Where --distribute multi_worker reads its cluster: TensorFlow's own variable.
TF_CONFIG = "TF_CONFIG"


def worker_task(environ=os.environ) -> tuple[str, int]:
    """``(task_type, task_index)`` of ``--distribute multi_worker`` from ``TF_CONFIG``
    (``{"cluster": {"worker": [HOST:PORT, ...], "chief": [...]}, "task": {"type": "worker",
    "index": I}}``).

    Raises:
        RecipeError: ``TF_CONFIG`` unset, not JSON, or without a cluster and a task in it.
    """
    import json

    text = environ.get(TF_CONFIG)
    if not text:
        raise RecipeError(
            f"--distribute multi_worker needs the environment variable {TF_CONFIG}: "
            '{"cluster": {"worker": ["HOST:PORT", ...]}, "task": {"type": "worker", '
            '"index": I}}, the same cluster on every worker and each its own index.'
        )
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, task_index = str(task["type"]), int(task["index"])
        addresses = cluster[task_type]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise RecipeError(
            f"{TF_CONFIG}={text!r} is not a TensorFlow cluster configuration ({error!r}): it "
            'needs {"cluster": {"worker": [...]}, "task": {"type": ..., "index": ...}}.'
        ) from None
    if not 0 <= task_index < len(addresses):
        raise RecipeError(
            f"{TF_CONFIG}'s task index {task_index} is not one of its {len(addresses)} "
            f"{task_type!r} addresses."
        )
    return task_type, task_index


def is_chief_worker(environ=os.environ) -> bool:
    """Whether this ``--distribute multi_worker`` worker writes ``--out``: the ``chief`` task,
    or worker 0 of a cluster without one (TensorFlow's convention)."""
    import json

    task_type, task_index = worker_task(environ)
    has_chief = bool(json.loads(environ[TF_CONFIG])["cluster"].get("chief"))
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_index == 0)


def multi_worker_strategy(args: argparse.Namespace) -> Any:
    """The ``tf.distribute.MultiWorkerMirroredStrategy`` of ``--distribute multi_worker``,
    then the seed and dtype policy (``setup_runtime``'s order, the strategy first)."""
    import keras
    import tensorflow as tf

    worker_task()  # TF_CONFIG was checked before; this worker's task is read by TensorFlow
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(args.seed)
    keras.config.set_dtype_policy(args.precision)
    replicas = strategy.num_replicas_in_sync
    batch_size = getattr(args, "batch_size", None)
    if batch_size is not None and batch_size % replicas:
        raise RecipeError(
            f"--batch-size {batch_size} must be divisible by the {replicas} replicas of "
            "--distribute multi_worker (every worker feeds an equal part of each batch)."
        )
    print(f"MultiWorkerMirroredStrategy over {replicas} replica(s).", flush=True)
    return strategy
