"""The fingerprint speed benchmark runs end to end and reports every figure (no time is asserted)."""

from __future__ import annotations

import json

from benchmarks import fingerprint_speed


def test_the_fingerprint_benchmark_reports_every_figure(shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BIOIDENT_FINGERPRINT_EXTRACTOR", "nbis")  # the fast extractor: this checks the plumbing
    data = tmp_path / "fvc"
    (data / "DB1_B").mkdir(parents=True)
    for image in sorted((shared_data / "fingerprint" / "fvc2002" / "DB1_B").glob("10[1-4]_*.tif")):
        (data / "DB1_B" / image.name).symlink_to(image)
    out = tmp_path / "fingerprint.json"
    results = fingerprint_speed.main(["--data", str(data), "--gallery", "60", "--probes", "8", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results["extraction"]["images"] == 32 and results["extraction"]["ms_per_image_p50"] > 0
    assert results["one_to_one"]["comparisons_per_s"] > 0
    one_to_n = results["one_to_n"]
    assert one_to_n["gallery"] == 60 and one_to_n["probes"] == 8
    assert 0.5 <= one_to_n["rank1"] <= one_to_n["rank5"] <= 1.0  # real prints among copies of other fingers
    assert "1:N over 60" in capsys.readouterr().out
