"""``bench/bench_gpu.py`` runs end to end at tiny size on CPU, so it cannot rot before a GPU runs it."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(os.environ.get("VLMTUNE_GOLDEN_DIR") or REPO.parent / "shared" / "golden" / "phi3v")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "bench" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_gpu_runs_at_tiny_size_on_cpu(tmp_path):
    if not (GOLDEN / "hub" / "config.json").is_file():
        reason = (
            "Phi-3-V hub files not found (set VLMTUNE_GOLDEN_DIR or place ../shared/golden/phi3v)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path / "bench_gpu.json"
    argv = [
        "--device", "cpu", "--tiny", "--steps", "1", "--warmup", "1", "--num-crops", "1",
        "--samples", "2", "--model-dir", str(GOLDEN / "hub"),
        "--processor-dir", str(GOLDEN / "checkpoint"), "--json", str(out),
    ]  # fmt: skip
    report = _bench().main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["machine"]["device"] == "cpu" and report["model"] == "tiny"
    results = {(r["mode"], r["layout"]): r for r in report["results"]}
    assert {mode for mode, _ in results} == {"lora", "frozen_vision", "full"}
    for mode in ("lora", "frozen_vision", "full"):
        run = results[(mode, "padded")]
        assert run["status"] == "ok", run
        assert run["batch_size"] == 2 and run["attn"] == "sdpa"
        for key in ("img_per_s_per_gpu", "tokens_per_s", "peak_memory_gib", "mfu",
                    "model_tflops_per_step", "planner_allocated_gib"):  # fmt: skip
            assert run[key] > 0, key
        assert 0 <= run["pad_fraction"] < 1
        # the planner's estimate of the same step, checked against the CPU allocator's peak
        assert 0.85 <= run["planner_over_measured"] <= 1.15, run
        cookbook = run["cookbook_img_per_s_per_gpu"]
        assert cookbook == pytest.approx(_bench().COOKBOOK_IMG_PER_S_8_A100[(mode, True)] / 8)
        assert run["ratio_to_cookbook"] == pytest.approx(run["img_per_s_per_gpu"] / cookbook)
        packed = results[(mode, "packed")]
        assert packed["status"] == "ok" and packed["pad_fraction"] == 0, packed
        assert packed["img_per_s_per_gpu"] > 0 and packed["tokens_per_s"] > 0
        # the same samples: the same model FLOPs, padded or packed
        assert packed["model_tflops_per_step"] == pytest.approx(run["model_tflops_per_step"])
    full, lora = results[("full", "padded")], results[("lora", "padded")]
    assert full["model_tflops_per_step"] > lora["model_tflops_per_step"]  # 6P against 4P
