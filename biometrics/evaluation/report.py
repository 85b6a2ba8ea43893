"""An audit report on disk: ``report.json`` (everything, ``AccuracyReport.to_dict()``) and ``report.html``
(one self-contained page).

The page embeds its figures as base64 PNG (a DET curve on normal-deviate axes, and the genuine and
impostor score histograms), the metrics, the threshold table and how to reproduce the run.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from biometrics.evaluation.accuracy_report import AccuracyReport
from biometrics.evaluation.metrics import det_points, probit

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"

_DET_TICKS = (1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.2, 0.4)
_DET_FLOOR = 5e-5


def write_report(report: AccuracyReport, out_dir: Path) -> tuple[Path, Path]:
    """Writes ``out_dir/report.json`` and ``out_dir/report.html``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / REPORT_JSON, out_dir / REPORT_HTML
    json_path.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path


def load_report(path: Path) -> AccuracyReport:
    """The report at ``path``: a report.json file, or the audit output folder holding one.

    Raises ``ValueError`` when the file is not JSON and ``ReportError`` when it is not a report.
    """
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    return AccuracyReport.from_dict(json.loads(path.read_text(encoding="utf-8")))


# --- figures -------------------------------------------------------------------------------------


def _png(figure) -> str:  # noqa: ANN001
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def det_plot_png(genuine: np.ndarray, impostor: np.ndarray, marks: dict[str, tuple[float, float]]) -> str:
    """DET curve (FNMR against FMR, both on normal-deviate axes) as base64 PNG; ``marks`` label points."""
    plt = _pyplot()
    fmr, fnmr = det_points(genuine, impostor)
    floor = min(_DET_FLOOR, 0.5 / max(len(impostor), len(genuine)))
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    ax.step(probit(np.maximum(fmr, floor)), probit(np.maximum(fnmr, floor)), where="post", color="tab:blue", lw=1.6)
    for label, (x, y) in marks.items():
        ax.plot(probit(max(x, floor)), probit(max(y, floor)), "o", ms=5, label=label)
    ticks = [t for t in _DET_TICKS if t >= floor]
    names = [f"{t * 100:g}%" for t in ticks]
    lo, hi = float(probit(floor)), float(probit(0.5))
    ax.set_xticks(probit(np.array(ticks)), names)
    ax.set_yticks(probit(np.array(ticks)), names)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.6, ls=":")
    ax.set_xlabel("false match rate (FMR)")
    ax.set_ylabel("false non-match rate (FNMR)")
    ax.set_title("DET curve (normal-deviate axes)")
    ax.grid(True, lw=0.4, alpha=0.6)
    if marks:
        ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def histogram_png(genuine: np.ndarray, impostor: np.ndarray, thresholds: dict[str, float], method: str) -> str:
    plt = _pyplot()
    both = np.concatenate([genuine, impostor])
    bins = np.linspace(both.min(), both.max(), 60)
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    ax.hist(impostor, bins=bins, density=True, alpha=0.6, color="tab:red", label=f"impostor ({len(impostor)})")
    ax.hist(genuine, bins=bins, density=True, alpha=0.6, color="tab:green", label=f"genuine ({len(genuine)})")
    for (label, value), style in zip(thresholds.items(), ("--", ":", "-."), strict=False):
        ax.axvline(value, color="black", ls=style, lw=1, label=f"{label} ({value:.3f})")
    ax.set_xlabel(f"score ({method})")
    ax.set_ylabel("density")
    ax.set_title("Score distributions")
    ax.legend(fontsize=8)
    return _png(fig)


# --- the page ----------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
code, pre { background: #f4f4f4; padding: 0.1rem 0.3rem; }
pre { padding: 0.6rem; overflow-x: auto; white-space: pre-wrap; }
.warn { color: #a40; }
"""


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def _or_na(value: str | None) -> str:
    return "n/a" if value is None else value


def _rows(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: AccuracyReport) -> str:
    genuine, impostor = report.scores.arrays()
    table = report.threshold_table
    marks = {f"{r.label}": (r.fmr, r.fnmr) for r in table if r.kind in ("eer", "configured")}
    det = det_plot_png(genuine, impostor, marks)
    lines = {r.label: r.threshold for r in table if r.kind == "configured" or r.label == "FMR <= 0.001"}
    hist = histogram_png(genuine, impostor, lines, report.scoring.method)

    counts = report.counts
    metrics = [
        ["EER", _pct(report.eer)],
        *[[f"minDCF (p_target {p})", f"{v:.4f}"] for p, v in report.min_dcf.items()],
        *[
            [
                f"FNMR @ FMR {t}",
                f"{_pct(v.fnmr)} (95% CI {_pct(v.ci95[0])} - {_pct(v.ci95[1])})" + ("" if v.resolvable else " *"),
            ]
            for t, v in report.fnmr_at_fmr.items()
        ],
        ["FTE (failure to enrol)", f"{_pct(report.fte)} of {report.failures.enrolment.samples} samples"],
        ["FTA (failure to acquire)", f"{_pct(report.fta)} of {report.failures.acquisition.samples}"],
        ["genuine trials scored", f"{counts.scored_genuine_trials} of {counts.genuine_trials}"],
        ["impostor trials scored", f"{counts.scored_impostor_trials} of {counts.impostor_trials}"],
    ]
    thresholds = [
        [
            r.label,
            f"{r.threshold:.4f}",
            _pct(r.fmr),
            _pct(r.fnmr),
            _pct(r.generalised_far),
            _pct(r.generalised_frr),
        ]
        for r in table
    ]
    scoring = report.scoring
    cohort = scoring.cohort
    cohort_text = (
        "none (plain cosine)"
        if cohort is None
        else f"{cohort.size} embeddings, {cohort.channel} channel, file {_or_na(cohort.file)} "
        f"(sha256 {_or_na(cohort.file_sha256)})"
    )
    about = [
        ["model fingerprint", report.model_fingerprint],
        ["precision", _or_na(report.precision)],
        ["channel", report.channel],
        ["scoring", f"{scoring.method}, configured threshold {scoring.configured_threshold}"],
        ["cohort", cohort_text],
        ["dataset", f"{report.dataset.path} ({counts.files} files)"],
        ["dataset sha256", report.dataset_sha256],
        ["trials", json.dumps(report.dataset.trials)],
        ["created", report.created_at],
    ]
    settings = " ".join(f"BIOIDENT_{k.upper()}={v}" for k, v in report.settings.items())
    warnings = "".join(f'<p class="warn">{html.escape(w)}</p>' for w in report.warnings)
    note = (
        "<p>* fewer impostor trials than 1/target: this shows the threshold that accepts no impostor at all.</p>"
        if any(not v.resolvable for v in report.fnmr_at_fmr.values())
        else ""
    )
    protocol = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in report.protocol.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>bioident accuracy audit</title>
<style>{_STYLE}</style></head><body>
<h1>Voice verification accuracy audit</h1>
{warnings}
{_rows(about, ["", ""])}
<h2>Metrics</h2>
{_rows(metrics, ["metric", "value"])}
{note}
<h2>DET curve</h2>
<img alt="DET curve" src="data:image/png;base64,{det}">
<h2>Score distributions</h2>
<img alt="score histograms" src="data:image/png;base64,{hist}">
<h2>Thresholds</h2>
<p>Accept when score &ge; threshold. FMR and FNMR are over scored trials; the generalised rates are over all
trials, a trial excluded by a failure to enrol or acquire counting as a rejection.</p>
{_rows(thresholds, ["operating point", "threshold", "FMR", "FNMR", "generalised FAR", "generalised FRR"])}
<h2>Protocol</h2>
<ul>{protocol}</ul>
<h2>How to reproduce</h2>
<p>With the same model (fingerprint <code>{html.escape(report.model_fingerprint)}</code>) and a dataset whose
sha256 is <code>{html.escape(report.dataset_sha256)}</code>, run:</p>
<pre>{html.escape(report.command or "(run through the Python API)")}</pre>
<p>with these settings in the environment:</p>
<pre>{html.escape(settings)}</pre>
</body></html>
"""
