"""benchmarks/paper_networks.py: its flags and the speed-up bookkeeping (no timing here)."""

from benchmarks import paper_networks


def test_speedups_compare_each_policy_with_float32_at_the_same_backend_and_size():
    records = [
        {"backend": "jax", "image_shape": "32x32x3", "policy": "float32", "step_ms": 10.0},
        {"backend": "jax", "image_shape": "32x32x3", "policy": "mixed_bfloat16", "step_ms": 40.0},
        {"backend": "jax", "image_shape": "128x128x3", "policy": "mixed_bfloat16", "step_ms": 5.0},
        {"backend": "torch", "image_shape": "32x32x3", "policy": "float32", "step_ms": 20.0},
        {"backend": "torch", "image_shape": "32x32x3", "policy": "mixed_bfloat16", "error": "x"},
    ]
    out = paper_networks.add_speedups(records)
    assert [r.get("speedup_vs_float32") for r in out] == [1.0, 0.25, None, 1.0, None]


def test_quick_flags_and_forwarding():
    args = paper_networks.parse_args(["--quick"])
    assert args.backends == ["tensorflow"] and args.sizes == [32] and args.steps == 3
    args = paper_networks.parse_args(["--filters", "256", "--sizes", "128"])
    assert args.filters == 256 and args.sizes == [128] and args.num_residual_blocks == 2
