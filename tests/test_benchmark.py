"""The speed benchmark runs end to end and its two paths embed alike (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks.embedding_speed import main
from tests.conftest import TEST_OTHER

pytestmark = pytest.mark.model


def test_the_speed_benchmark_reports_every_figure_and_both_paths_agree(tmp_path, capsys):
    out = tmp_path / "speed.json"
    results = main(
        ["--utterances", "3", "--repeats", "1", "--wait-idle", "0", "--out", str(out), "--data", str(TEST_OTHER)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results["min_cosine_a_vs_b"] >= 0.9999
    for path in ("a_plain_speechbrain", "b_batched", "c_gemm_bound", "d_blas_ceiling"):
        assert results[path]["audio_s_per_s"] > 0, path
    assert results["c_gemm_bound"]["model_flops_per_audio_s"] > 1e9  # ECAPA: about 3.75 GFLOP per second of audio
    assert set(results["target"]) >= {"b_over_c_met", "peak_rss_after_b_met", "met"}
    table = capsys.readouterr().out
    assert "(b)/(c)" in table and "peak RSS" in table
