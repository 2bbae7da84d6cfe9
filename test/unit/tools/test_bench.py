"""`gs-reasoner bench` at CI size: the JSON contract, sane values, and the fast path's own check."""
from __future__ import annotations

import json
import math

import pytest

from gs_reasoner_ros.tools import cli
from gs_reasoner_ros.tools.bench import GPU_KEYS


def run_json(capsys, *argv) -> dict:
    assert cli.main(["bench", *argv, "--json"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1, "--json prints exactly one line"
    return json.loads(lines[0])


def test_bench_gpu_tiny_reports_fast_baseline_and_floor(capsys):
    r = run_json(capsys, "gpu", "--tiny", "--frames", "1", "--repeats", "1", "--grounding-tokens", "4",
                 "--cot-tokens", "6", "--check", "--path", "both")
    for key in GPU_KEYS:
        for name in (key, f"baseline_{key}", f"floor_{key}"):
            assert name in r, name
    for key in ("decode_ms_per_token", "grounding_s", "cot256_s", "followup_s", "sonata_s",
                "baseline_decode_ms_per_token", "baseline_grounding_s", "baseline_cot256_s", "baseline_sonata_s",
                "floor_decode_ms_per_token", "floor_grounding_s", "floor_cot256_s", "floor_followup_s",
                "floor_sonata_s", "floor_peak_mem_gb", "gemm_tflops", "copy_tbps"):
        assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (key, r[key])
    assert r["peak_mem_gb"] is None and r["device"] == "cpu"  # no CUDA memory to report on CPU
    # a query decodes more tokens than a follow-up prefills: the query must take longer
    assert r["cot256_s"] > r["followup_s"]
    assert r["prompt_tokens"] == 14 + 210 + 106 and r["visual_tokens"] == 210
    # the fast path picks, in float32, exactly the tokens a transformers forward pass picks
    assert r["check_token_agreement"] == 1.0
    assert r["check_prompt_logits_rel_err"] < 1e-4
    assert r["check_leading_tokens_equal_baseline"] == 4
    assert r["check_baseline_token_agreement"] == 1.0 and r["check_max_gap_std"] < 1e-4
    # the product path: cold keyframes preprocess every frame, a follow-up hits both caches
    assert r["stages_grounding"]["frames_preprocessed"] == 1.0 and r["stages_grounding"]["prefix_cache_hit"] == 0.0
    assert r["stages_grounding_arrival"]["frames_preprocessed"] == 0.0
    assert r["stages_followup_total"]["visual_cache_hit"] == r["stages_followup_total"]["prefix_cache_hit"] == 1.0
    assert r["engine_grounding_s"] > 0 and r["prepare_frames_s"] > 0 and r["warmup_s"] > 0


def test_bench_mapping_tiny(capsys):
    r = run_json(capsys, "mapping", "--tiny", "--repeats", "1", "--duration", "0.5")
    assert r["cpu_ms_per_frame"] > 0 and r["cpu_ms_per_frame_synthetic"] > 0
    assert "cuda_ms_per_frame" in r
    for rate in ("15hz", "30hz"):
        sent, dropped, done = (r[f"intake_{rate}_{k}"] for k in ("sent", "dropped", "integrated"))
        assert sent == int(0.5 * int(rate[:2]))
        assert done + dropped == sent  # every frame is either integrated or counted as dropped
        assert r[f"intake_{rate}_rate_hz"] > 0


def test_bench_rejects_bad_arguments(capsys):
    assert cli.main(["bench", "gpu", "--tiny", "--variants", "warp-speed"]) == 2
    assert "unknown decode variants" in capsys.readouterr().err
    assert cli.main(["bench", "mapping", "--rates", "fast"]) == 2
    assert "--rates" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["bench", "nothing"])


def test_bench_gpu_rejects_too_few_tokens(capsys):
    assert cli.main(["bench", "gpu", "--tiny", "--grounding-tokens", "1"]) == 2
    assert "--grounding-tokens must be at least 2" in capsys.readouterr().err
