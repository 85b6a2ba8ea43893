"""The benchmarks run end to end and report every figure (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks import bf16_pass, embedding_speed, gemm_bound, load, verify_latency
from biometrics.voice.model import cpu_kernels, onednn_bf16
from biometrics.voice.model.onednn_bf16 import onednn_bf16_available
from biometrics.voice.model.precision import cpu_flags, has_native_bf16
from tests.conftest import TEST_OTHER

pytestmark = pytest.mark.model


def test_the_speed_benchmark_reports_every_figure_and_both_paths_agree(tmp_path, capsys):
    out = tmp_path / "speed.json"
    results = embedding_speed.main(
        ["--utterances", "3", "--repeats", "1", "--wait-idle", "0", "--out", str(out), "--data", str(TEST_OTHER)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results["min_cosine_a_vs_b"] >= 0.9999
    for path in ("a_plain_speechbrain", "b_batched", "c_gemm_bound", "d_blas_ceiling"):
        assert results[path]["audio_s_per_s"] > 0, path
    assert results["c_gemm_bound"]["model_flops_per_audio_s"] > 1e9  # ECAPA: about 3.75 GFLOP per second of audio
    assert set(results["target"]) >= {"b_over_c_met", "peak_rss_after_b_met", "met"}
    # (b)/(c) comes from runs where GEMMs followed each turn of forward passes: one run per repeat, each
    # with a ratio, and each turn's bound the faster of its GEMM arrangements (one product at a time on
    # all cores, or as many at once as (b) runs passes).
    paired = results["runs"]["paired"]
    assert len(paired) == 1 and 1 <= paired[0]["turns"] <= paired[0]["forward_passes"]
    by_workers = paired[0]["gemm_flops_per_s_by_workers"]
    assert set(by_workers) == {"1", str(results["concurrent_passes"])} and min(by_workers.values()) > 0
    assert paired[0]["gemm_flops_per_s"] >= max(by_workers.values()) * (1 - 1e-9)
    assert results["ratio_b_over_c"] == paired[0]["b_over_c"] > 0
    c = results["c_gemm_bound"]
    assert c["paired_b_audio_s_per_s"] / c["audio_s_per_s"] == pytest.approx(results["ratio_b_over_c"])
    # (d) replays (b)'s products in the same arrangements as (c), the faster counting.
    replayed = results["d_blas_ceiling"]["gemm_s_by_workers"]
    assert set(replayed) == set(by_workers) and results["d_blas_ceiling"]["gemm_s"] == min(replayed.values()) > 0
    assert results["b_batched"]["precision"] == "fp32"
    table = capsys.readouterr().out
    assert "(b)/(c)" in table and "peak RSS" in table
    if not has_native_bf16(cpu_flags()):  # torch would emulate bf16 here, at about 1 GFLOP/s a core
        assert results["b16_skipped"].startswith("no native bf16") and "b16_batched" not in results
        assert not results["target"]["b16_targets_apply"] and "(b16) and (c16) not measured" in table
        return
    # (b16): the same path with bf16 products, paired with bf16 and fp32 square products at the same moments.
    assert results["b16_batched"]["precision"] == "bf16" and results["target"]["b16_targets_apply"]
    assert results["b16_batched"]["audio_s_per_s"] > 0 and results["c16_gemm_bound"]["audio_s_per_s"] > 0
    assert results["min_cosine_b_vs_b16"] >= 0.9999
    paired16 = results["runs"]["paired16"]
    assert len(paired16) == 1 and set(paired16[0]["by_precision"]) == {"bf16", "fp32"}
    assert results["ratio_b16_over_c16"] == paired16[0]["b16_over_c16"] > 0
    assert results["ratio_b16_over_c32"] == paired16[0]["b16_over_c32"] > results["ratio_b16_over_c16"]
    assert results["ratio_b16_over_b32"] > 0
    assert "(b16)/(c16)" in table and "(b16)/(c32)" in table


def test_the_latency_benchmark_places_every_call_through_a_real_server(database_url, tmp_path, capsys):
    out = tmp_path / "latency.json"
    argv = ["--speakers", "2", "--calls", "4", "--concurrency", "1,2", "--out", str(out), "--data", str(TEST_OTHER)]
    # One run per precision; one database takes one run, so PostgreSQL gets the default one.
    argv += ["--database-url", database_url, "--precision", "auto"] if database_url.startswith("postgresql") else []
    report = verify_latency.main(argv)
    assert json.loads(out.read_text()) == report
    assert report["database"] == database_url.split(":", 1)[0].split("+", 1)[0]
    runs = report["runs"]
    # bf16 is run where it is native; elsewhere torch emulates it, seconds per second of audio (--precision forces it).
    both = ["fp32", "bf16"] if has_native_bf16(cpu_flags()) else ["fp32"]
    expected = ["auto"] if database_url.startswith("postgresql") else both
    assert [run["precision"] for run in runs] == expected
    assert all(run["precision_in_use"] in ("fp32", "bf16") for run in runs)
    levels = [level for run in runs for level in run["levels"]]
    assert [level["concurrency"] for level in levels] == [1, 2] * len(runs)
    for level in levels:
        assert level["calls"] == 4 and level["failed_calls"] == 0 and level["statuses"] == [200]
        assert 0 < level["latency_ms"]["p50"] <= level["latency_ms"]["p95"] <= level["latency_ms"]["max"]
        assert level["genuine_accepted"].endswith("/2") and level["impostors_rejected"].endswith("/2")
    assert "p95 ms" in capsys.readouterr().out
    if database_url.startswith("postgresql"):  # the database now holds clients: a second run is refused
        with pytest.raises(SystemExit, match="bioident serve exited: .*the database holds data"):
            verify_latency.main(argv)


def test_the_latency_benchmark_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit, match="no speech folder at"):
        verify_latency.main(["--data", "/nonexistent/test-other"])
    for argv in (["--concurrency", "one"], ["--speakers", "1"], ["--calls", "0"], ["--precision", "fp16"]):
        with pytest.raises(SystemExit) as exit_info:
            verify_latency.main(argv)
        assert exit_info.value.code == 2, argv
    assert "--concurrency takes whole numbers" in capsys.readouterr().err


def test_the_load_benchmark_answers_every_caller_and_stream_through_a_real_server(tmp_path, capsys):
    out = tmp_path / "load.json"
    argv = ["--speakers", "2", "--callers", "2", "--duration", "1", "--max-calls", "4", "--streams", "2"]
    argv += ["--stream-spreads", "0.5"]
    report = load.main([*argv, "--out", str(out), "--data", str(TEST_OTHER)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["offline_calls_per_s"] > 0
    level = report["load"]
    assert level["errors"] == 0 and set(level["statuses"]) == {"200"} and 1 <= level["calls"] <= 4
    assert level["fraction_of_offline"] == pytest.approx(level["calls_per_s"] / report["offline_calls_per_s"])
    [streams] = report["streaming"]
    assert streams["starts_spread_s"] == 0.5 and 1 <= streams["most_open_at_once"] <= 2
    assert streams["errors"] == [] and sum(streams["decisions"].values()) == 2
    assert streams["decisions"].get("none", 0) == 0
    assert "of offline" in capsys.readouterr().out
    for bad in (["--callers", "0"], ["--stream-spreads", "soon"], ["--stream-spreads", "-1"]):
        with pytest.raises(SystemExit) as refused:
            load.main(bad)
        assert refused.value.code == 2, bad


def test_paired_gemms_use_the_fastest_size_whose_product_fits_a_quarter_of_a_forward_pass():
    rates = {1024: 100e9, 2048: 120e9, 4096: 130e9}  # one product: 0.021 s, 0.143 s, 1.06 s
    assert gemm_bound.paired_gemm_size(rates, pass_s=0.5) == 1024
    assert gemm_bound.paired_gemm_size(rates, pass_s=1.0) == 2048
    assert gemm_bound.paired_gemm_size(rates, pass_s=5.0) == 4096
    assert gemm_bound.paired_gemm_size(rates, pass_s=0.01) == 1024  # none fits: the smallest


def test_the_bf16_figures_and_targets_come_from_the_paired_runs():
    """What (b16), (c16) and their ratios are made of, checked on a host with or without native bf16."""
    import numpy as np

    by_precision = {"bf16": {"gemm_flops_per_s": 100e9}, "fp32": {"gemm_flops_per_s": 25e9}}
    paired = {"b_passes_s": 2.0, "by_precision": by_precision}
    timings = {
        "b16": [{"wall_s": 2.5}, {"wall_s": 2.0}],
        "gemm16": [{"flops_per_s": {1: {1024: 90e9}, 2: {1024: 80e9, 2048: 120e9}}}],
        "paired16": [paired],
    }
    vectors = np.eye(3, dtype=np.float32)
    got = embedding_speed._bf16_results(timings, {"b": vectors, "b16": vectors}, 100.0, 375e9, 25.0, (1, 2))
    assert got["b16_batched"]["audio_s_per_s"] == 50.0 and got["ratio_b16_over_b32"] == 2.0
    assert got["ratio_b16_over_c16"] == pytest.approx(375e9 / 2.0 / 100e9)  # 1.875
    assert got["ratio_b16_over_c32"] == pytest.approx(375e9 / 2.0 / 25e9)  # 7.5
    assert got["c16_gemm_bound"]["gemm_flops_per_s"] == {"1024": 90e9, "2048": 120e9}  # each size where measured
    assert got["target"]["b16_over_c16_met"] and got["target"]["b16_over_c32_met"]
    assert got["min_cosine_b_vs_b16"] == pytest.approx(1.0)
    assert got["runs"]["gemm16"][0]["flops_per_s"]["2"] == {"1024": 80e9, "2048": 120e9}


@pytest.mark.parametrize(
    ("flops_per_s", "swept"), [(300e9, [1024, 2048, 4096]), (1e9, [1024])], ids=["fp32", "emulated-bf16"]
)
def test_the_gemm_sweep_stops_before_a_size_whose_one_product_would_take_minutes(monkeypatch, flops_per_s, swept):
    monkeypatch.setattr(gemm_bound, "GEMM_SECONDS_PER_SIZE", 0.01)
    monkeypatch.setattr(gemm_bound, "square_products", lambda n, seconds, workers, operands, precision: flops_per_s)
    rates = gemm_bound.gemm_flops_per_s((1, 2), "bf16")
    assert {workers: list(by_size) for workers, by_size in rates.items()} == {1: swept, 2: swept}


def test_the_identify_scale_benchmark_reports_every_figure(tmp_path, capsys):
    from benchmarks import identify_scale

    data = tmp_path / "speakers"  # two real speakers keep the model work small
    data.mkdir()
    for speaker in ("1688", "2033"):
        (data / speaker).symlink_to(TEST_OTHER / speaker, target_is_directory=True)
    out = tmp_path / "scale.json"
    results = identify_scale.main(["--sizes", "0", "3000", "--wait-idle", "0", "--out", str(out), "--data", str(data)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    real, scaled = results["runs"]
    assert real["voiceprints"] == real["real_enrolled"] == 2 + 251 and scaled["voiceprints"] == 3000
    for run in (real, scaled):
        assert run["queries"] == 14 and 0 <= run["rank1"] <= run["in_top_k"] <= 1
        assert run["ms_per_query_p50"] > 0 and run["gallery_matrix_mb"] > 0
    assert real["rank1"] >= 0.9  # held-out utterances of the two speakers, among the cohort's 251
    assert results["genuine_score_mean"] > results["real_impostor_score_mean"]
    assert results["target"]["met"] is None  # no 1,000,000 run here
    assert "| 3,000 |" in capsys.readouterr().out


def test_the_bf16_pass_clock_charges_each_call_its_own_time_without_the_timed_calls_inside_it():
    ticks = iter([0.0, 2.0, 5.0, 6.0, 6.5, 10.0])  # outer starts, inner 2-5, inner 6-6.5, outer ends
    clock = bf16_pass.ExclusiveClock(now=lambda: next(ticks))
    inner = clock.timed(lambda: "inner", lambda: None)
    outer = clock.timed(lambda: "outer", lambda: (inner(), inner()))
    outer()
    assert clock.seconds == {"inner": 3.5, "outer": 6.5}


@pytest.mark.skipif(not onednn_bf16_available(), reason="oneDNN has no bf16 kernels on this CPU: no oneDNN pass")
def test_the_bf16_pass_benchmark_times_every_stage_of_the_onednn_pass_and_puts_the_plan_back(tmp_path, capsys):
    originals = (onednn_bf16.FusedLayer.__call__, onednn_bf16._padded, onednn_bf16.weighted_moments)
    out = tmp_path / "pass.json"
    argv = ["--utterances", "2", "--per-pass", "2", "--rounds", "1", "--out", str(out), "--data", str(TEST_OTHER)]
    results = bf16_pass.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    stages = results["stages"]
    for name in bf16_pass.STAGES:  # each piece of the plan was called and timed
        assert stages[name]["ms_per_1000_frames"] > 0, name
    # Exclusive times: none counted twice, so they fit in the pass's wall time.
    assert stages["outside the model (packing rows, embedding norm)"]["ms_per_1000_frames"] >= 0
    assert 0 < results["shares"]["fp32"] < 1 and 0 < results["shares"]["bf16 oneDNN"] < 1
    assert (onednn_bf16.FusedLayer.__call__, onednn_bf16._padded, onednn_bf16.weighted_moments) == originals
    assert "products: MFA" in capsys.readouterr().out


def test_the_bf16_pass_benchmark_says_why_when_the_pass_is_not_on_onednn(monkeypatch, capsys):
    monkeypatch.setattr(cpu_kernels, "onednn_bf16_available", lambda: False)
    with pytest.raises(SystemExit, match="not oneDNN"):
        bf16_pass.main(["--utterances", "1", "--data", str(TEST_OTHER)])
