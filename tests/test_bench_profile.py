"""The training profiler ``benchmarks/train_profile.py`` (the kernel breakdown of a trace, a real profiled step)
and where the benchmarks write their results."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_profile as bench


def _trace(path: Path, kernels: list[tuple[float, float, str]]) -> Path:
    events = [{"cat": "kernel", "ts": ts, "dur": dur, "name": name} for ts, dur, name in kernels]
    events.append({"cat": "cpu_op", "ts": 0, "dur": 500, "name": "aten::mul"})  # host events are not GPU time
    path.write_bytes(gzip.compress(json.dumps({"traceEvents": events}).encode()))
    return path


def test_kernel_breakdown_counts_overlaps_once_and_classifies(tmp_path):
    trace = _trace(tmp_path / "t.json.gz", [
        (0, 100, "sm90_xmma_fprop_implicit_gemm_bf16"),  # 0-100
        (50, 100, "void at::native::vectorized_elementwise_kernel<4, MulFunctor>"),  # overlaps: busy to 150
        (300, 20, "void cudnn::engines_precompiled::nchwToNhwcKernel<bf16>"),
        (400, 40, "void at::native::reduce_kernel<512, 1, WelfordOps>"),
    ])
    result = bench.kernel_breakdown(trace, steps=2)
    assert result["gpu_busy_ms_per_step"] == pytest.approx((150 + 20 + 40) / 1e3 / 2)
    assert result["kernels_per_step"] == 2
    shares = {row["kernels"]: row["ms_per_step"] for row in result["classes"]}
    assert shares == pytest.approx({"convolution / GEMM": 0.05, "elementwise, copies": 0.05,
                                    "layout NCHW <-> NHWC": 0.01, "reductions, norms": 0.02})
    assert sum(row["share_pct"] for row in result["classes"]) == pytest.approx(100)


def test_profile_step_writes_a_trace_of_real_training_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    result = bench.profile_step("tiny", "cpu", batch=1, steps=1)
    trace = tmp_path / "train-profile-cpu.json.gz"
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    names = {e.get("name") for e in events}
    assert "aten::convolution_backward" in names and any("Adam" in (n or "") for n in names)
    assert result["host_ops"] and result["profiled_ms_per_step"] > 0
    assert "gpu_busy_ms_per_step" not in result  # no kernels on a CPU
    assert "GPU kernels" not in bench.print_profile(result)


def test_results_are_also_written_where_cdc_bench_copy_points(tmp_path, monkeypatch):
    """On a remote GPU machine the results land in $OUT as they are made, so a run cut off by the
    call's limit still returns them."""
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setenv("CDC_BENCH_COPY", str(tmp_path))
    path = common.write_json("partial-run", {"rows": [1]})
    assert json.loads((tmp_path / "partial-run.json").read_text()) == json.loads(path.read_text())


def test_roofline_counts_the_steps_flops_and_orders_its_ceilings():
    """``benchmarks/roofline.py`` sees every FLOP the trainer's counter sees (views add no bytes), and its
    ceilings fall as they price more of the step."""
    import roofline
    from train import flops_per_image

    ops = roofline.step_ledger("tiny", 2, 64)
    table, summary = roofline.ceilings(ops, 2)
    assert summary["gflop_per_image"] == pytest.approx(flops_per_image("tiny", crop=64) / 1e9, rel=1e-6)
    assert all(b > 0 for _, _, b in ops) and not any(name.startswith("aten.view") for name, _, _ in ops)
    ideal, *_, rest, measured = table
    assert ideal["mfu_ceiling_pct"] > rest["mfu_ceiling_pct"] > 0
    assert measured["mfu_ceiling_pct"] == roofline.MEASURED_MFU_PCT
