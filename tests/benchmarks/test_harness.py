"""The benchmarks' shared runner: child processes, JSON lines, failures, alternating rounds."""

from __future__ import annotations

import argparse
import sys
import time

import pytest

from benchmarks import _harness


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_run_command_collects_json_lines_and_names_the_backend():
    code = (
        "import json, os\n"
        "print('warming up')\n"
        "print(json.dumps({'figure': 1}))\n"
        "print('{not json')\n"
        "print(json.dumps({'figure': 2, 'backend': 'other'}))\n"
        "print(json.dumps({'figure': 3, 'seen': os.environ['KERAS_BACKEND']}))\n"
    )
    run = _harness.run_command(python(code), backend="jax", timeout=60)
    assert run.error is None
    assert run.records == [
        {"figure": 1, "backend": "jax"},
        {"figure": 2, "backend": "other"},
        {"figure": 3, "seen": "jax", "backend": "jax"},
    ]


def test_run_command_reports_exit_status_and_the_last_stderr_line():
    code = "import json, sys\nprint(json.dumps({'a': 1}))\nsys.exit('broken: the reason')\n"
    run = _harness.run_command(python(code), timeout=60)
    assert run.records == [{"a": 1}]
    assert run.error == "exit 1: broken: the reason"


def test_run_command_counts_too_few_json_lines_as_a_failure():
    code = "import json\nprint(json.dumps({'a': 1}))\n"
    run = _harness.run_command(python(code), timeout=60, min_records=2)
    assert run.error is not None and run.error.startswith("1 JSON lines, expected at least 2")


def test_run_command_timeout_kills_the_grandchildren_too():
    # The child starts a grandchild that inherits stdout and would keep the pipe open for
    # a minute: without killing it too, collecting the output would wait that long.
    code = (
        "import json, subprocess, sys, time\n"
        "print(json.dumps({'started': True}), flush=True)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "time.sleep(60)\n"
    )
    start = time.perf_counter()
    run = _harness.run_command(python(code), timeout=3)
    assert time.perf_counter() - start < 30
    assert run.error == "timeout after 3 s"
    assert run.records == [{"started": True}]


def test_run_command_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match=r"`backend` must be one of.*'mxnet'"):
        _harness.run_command(python("pass"), backend="mxnet")


def test_run_configurations_adds_an_error_record_per_failed_run(monkeypatch):
    calls = []

    def fake_run_module(module, argv, **kwargs):
        calls.append((module, list(argv), kwargs["backend"]))
        if argv == ["bad"]:
            return _harness.ChildRun([{"partial": True}], "exit 2: boom", 0.1)
        return _harness.ChildRun([{"figure": 1}], None, 0.1)

    monkeypatch.setattr(_harness, "run_module", fake_run_module)
    records = _harness.run_configurations(
        "some_script",
        [("jax", ["good"], {"config": "good"}), ("torch", ["bad"], {"config": "bad"})],
        timeout=5,
    )
    assert calls == [("some_script", ["good"], "jax"), ("some_script", ["bad"], "torch")]
    assert records == [
        {"figure": 1},
        {"partial": True},
        {"config": "bad", "error": "exit 2: boom"},
    ]


def test_script_main_runs_the_child_or_emits_what_run_all_returns(capsys):
    def parse_args(argv):
        return argparse.Namespace(_child="x" if argv == ["--_child", "x"] else None)

    children = []
    _harness.script_main(parse_args, children.append, lambda args: [{"b": 2}], ["--_child", "x"])
    assert len(children) == 1 and capsys.readouterr().out == ""
    _harness.script_main(parse_args, children.append, lambda args: [{"b": 2}, {"a": 1}], [])
    assert len(children) == 1
    assert capsys.readouterr().out == '{"b": 2}\n{"a": 1}\n'


def test_flags_pass_set_values_on():
    args = argparse.Namespace(
        batch_size=64, sizes=[1, 2], ema_decay=None, quick=False, verbose=True, data_dir="d"
    )
    assert _harness.flags(
        args, "batch_size", "sizes", "ema_decay", "quick", "verbose", "data_dir"
    ) == [
        "--batch-size",
        "64",
        "--sizes",
        "1",
        "2",
        "--verbose",
        "--data-dir",
        "d",
    ]


def test_alternate_interleaves_and_drops_a_failing_measure():
    calls = []

    def good():
        calls.append("good")
        return len(calls)

    def flaky():
        calls.append("flaky")
        if calls.count("flaky") == 2:
            raise RuntimeError("second call fails")
        return -1.0

    values, errors = _harness.alternate({"good": good, "flaky": flaky}, rounds=3)
    # The order rotates each round; a measure that raised sits out the rest.
    assert calls == ["good", "flaky", "flaky", "good", "good"]
    assert values == {"good": [1, 4, 5]}
    assert errors == {"flaky": "RuntimeError: second call fails"}


def test_paired_ratio_is_the_median_of_per_round_ratios():
    ours = {"images_per_s": 95.0, "images_per_s_rounds": [90.0, 50.0, 100.0]}
    reference = {"images_per_s": 100.0, "images_per_s_rounds": [100.0, 50.0, 100.0]}
    # Per round 0.9, 1.0, 1.0; the medians' ratio would be 0.95 (or 0.9 for 90 vs 100).
    assert _harness.paired_ratio(ours, reference) == 1.0
    assert _harness.paired_ratio({"images_per_s": 90.0}, {"images_per_s": 100.0}) == 0.9
    assert _harness.paired_ratio({"error": "x"}, reference) is None


def test_train_throughput_ratios_pair_the_rounds():
    from benchmarks.train_throughput import add_ratios

    base = {"benchmark": "train_throughput", "backend": "torch", "jit_compile": False}
    records = [
        {
            **base,
            "model": "keras_vq",
            "images_per_s": 9.0,
            "images_per_s_rounds": [9.0, 8.0, 10.0],
        },
        {
            **base,
            "model": "plain_ae",
            "images_per_s": 9.5,
            "images_per_s_rounds": [9.5, 8.0, 10.0],
        },
        {**base, "model": "naive_vqvae", "images_per_s": 6.0},
    ]
    ours = add_ratios(records)[0]
    assert ours["ratio_vs_plain_ae"] == 1.0
    assert ours["ratio"] == 1.5
