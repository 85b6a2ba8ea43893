"""The till end to end, as a terminal sees it: a real ``bioident serve`` with many enrolled fingers, an
image in, a payment decision out, every request timed at the client over HTTP.

Run from the repository root::

    .venv/bin/python -m benchmarks.till_latency [--fingers 10000] [--payments 20] [--seed S] [--out PATH]

It makes a fresh data directory (SQLite) and fills it through the service's own code (consent, sealed
templates, payment links), then starts ``bioident serve`` on it, which builds its in-memory gallery at
start (timed). The enrolled customers are (their template rows stamped over the past year, as customers
enrol over time):

- real customers: fingers 1-5 of FVC2002 DB1_B (finger position 2) and DB2_B (position 7), each
  enrolled from impressions 1-2 of both fingers (as the till enrols: captures analysed and consolidated);
- distractor customers, two fingers each, up to ``--fingers`` fingers in all: rotated, translated and
  perturbed copies (``benchmarks.fingerprint_speed``'s: minutiae moved, dropped and added) of the real
  templates of the *other* 20 FVC fingers (DB1_B and DB2_B 6-10, DB3_B), so no distractor is a copy of a
  real customer's finger.

Then it pays with impression 5 of the real customers' DB1_B finger, three ways: card + finger (1:1),
finger + PIN, and finger only (1:N over every enrolled finger), sequentially on one connection, and
reports latency percentiles and the decisions. Each request's time covers HTTP and multipart parsing,
image decoding, minutiae extraction and quality, the gallery sync with the database, the index search
and full comparisons, the database re-check of the candidates, the audit entry's commit and (PIN mode)
argon2id. This is a benchmark, not a test: it asserts nothing on time. Results go to a table on stdout
and to JSON (default ``benchmarks/results/till_latency.json``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import REPO, RESULTS_DIR, write_results
from benchmarks.verify_latency import Server

FVC = REPO.parent / "shared" / "data" / "fingerprint" / "fvc2002"
DEFAULT_OUT = RESULTS_DIR / "till_latency.json"
TENANT = "bench"
PURPOSE = "payment"
REAL_CUSTOMERS = 5
PIN = "4821"
STARTUP_TIMEOUT_S = 3600.0  # the server loads the voice model and opens and indexes every enrolled finger
BATCH = 250  # subjects seeded per transaction


def _capture(path: Path):
    from biometrics.fingerprint.capture import analyse_capture
    from biometrics.fingerprint.images import decode_image

    return analyse_capture(decode_image(path.read_bytes()))


def _template(paths: list[Path]):
    """One consolidated template from these impressions' usable captures (None when fewer than two)."""
    from enroll.fingerprint import consolidate

    templates = [c.template for c in map(_capture, paths) if c.usable]
    return consolidate(templates) if len(templates) >= 2 else None


def perturbed(template, rng: np.random.Generator):
    """A distractor: each impression rotated, translated and perturbed as ``benchmarks.fingerprint_speed`` does."""
    from benchmarks.fingerprint_speed import perturbed as perturbed_impression
    from biometrics.fingerprint.templates import FingerprintTemplate

    return FingerprintTemplate([perturbed_impression(m, rng) for m in template.impressions], template.fingerprint)


def backdate(ctx, rng: np.random.Generator) -> None:
    """Spreads the template rows' stamps over the past year, as a till's customers enrol over time: with
    every row minutes old, each search's look at the rows stamped since its last one would cover them all."""
    import datetime as dt

    from sqlalchemy import select, update

    from service.store.models import Template, utcnow

    now = utcnow()
    with ctx.db.session() as session:
        ids = list(session.execute(select(Template.id)).scalars())
        stamps = [now - dt.timedelta(days=float(days)) for days in rng.uniform(1.0, 365.0, size=len(ids))]
        rows = [{"id": i, "created_at": t, "updated_at": t} for i, t in zip(ids, stamps, strict=True)]
        session.execute(update(Template), rows)  # one executemany by primary key


def seed(data_dir: Path, fingers: int, rng: np.random.Generator) -> tuple[str, list[dict], dict]:
    """Fills a fresh deployment: returns the terminal's API key, the real customers and seeding figures."""
    from service.admin.bootstrap import bootstrap_admin
    from service.admin.clients import create_client
    from service.auth import Principal, Role
    from service.consent.records import ConsentChannel, ConsentTerms, record_consent
    from service.context import ServiceContext
    from service.fingerprint.templates import store_fingers
    from service.modality import Modality
    from service.payment.links import store_payment_link
    from service.settings import ServiceSettings
    from service.store.db import upgrade

    settings = ServiceSettings(_env_file=None, data_dir=data_dir)
    upgrade(settings.resolved_database_url)
    ctx = ServiceContext(settings, create_keyring=True)
    bootstrap_admin(ctx.db)
    client, terminal_key = create_client(
        ctx.db, actor="benchmark", tenant_id=TENANT, name="till", role=Role.TERMINAL, new_tenant_name="till benchmark"
    )
    actor = Principal(client.id, TENANT, Role.TERMINAL)
    terms = ConsentTerms(Modality.FINGERPRINT, PURPOSE, "bench", "0" * 64, ConsentChannel.TERMINAL, "benchmark")

    started = time.perf_counter()
    real = []
    for i in range(REAL_CUSTOMERS):
        finger = str(101 + i)
        first = _template([FVC / "DB1_B" / f"{finger}_{n}.tif" for n in (1, 2)])
        second = _template([FVC / "DB2_B" / f"{finger}_{n}.tif" for n in (1, 2)])
        if first is None or second is None:
            continue
        real.append(
            {
                "reference": f"REAL-{finger}",
                "finger": finger,
                "token": f"tok_real_{finger}",
                "templates": {2: first, 7: second},
            }
        )
    bases = []
    for database, numbers in (("DB1_B", range(106, 111)), ("DB2_B", range(106, 111)), ("DB3_B", range(101, 111))):
        for n in numbers:
            for pair in ((1, 2), (3, 4), (6, 7)):
                template = _template([FVC / database / f"{n}_{k}.tif" for k in pair])
                if template is not None:
                    bases.append(template)
    extracted_s = time.perf_counter() - started

    started = time.perf_counter()
    subjects = [(c["reference"], c["templates"], c["token"], PIN) for c in real]
    distractors = max(0, fingers // 2 - len(subjects))
    for d in range(distractors):
        pair = rng.choice(len(bases), size=2, replace=False)
        subjects.append(
            (f"DIST-{d}", {2: perturbed(bases[pair[0]], rng), 7: perturbed(bases[pair[1]], rng)}, f"tok_d_{d}", None)
        )
    for start in range(0, len(subjects), BATCH):
        with ctx.db.session() as session:
            for reference, templates, token, pin in subjects[start : start + BATCH]:
                subject = ctx.token(TENANT, reference)
                record_consent(session, actor, subject, terms)
                store_fingers(session, ctx.keyring, TENANT, subject, templates)
                store_payment_link(session, ctx.keyring, TENANT, subject, token, pin)
    backdate(ctx, rng)
    seeded_s = time.perf_counter() - started
    ctx.db.engine.dispose()
    figures = {
        "real_customers": len(real),
        "distractor_bases": len(bases),
        "subjects": len(subjects),
        "fingers": 2 * len(subjects),
        "extraction_s": extracted_s,
        "seeding_s": seeded_s,
    }
    return terminal_key, real, figures


def wait_until_up(server: Server, key: str, probe: Path) -> tuple[float, float]:
    """Seconds until the server answers /health, and until finger-only payments are answered (the gallery
    is built in the background at start; until then they answer 503)."""
    started = time.perf_counter()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    up = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"bioident serve exited: {server._log_tail()}")
        try:
            if up is None and httpx.get(f"{server.url}/health", timeout=2.0).status_code == 200:
                up = time.perf_counter() - started
            if up is not None:
                response = httpx.post(
                    f"{server.url}/v1/fingerprint/pay",
                    files=[("finger", (probe.name, probe.read_bytes(), "image/tiff"))],
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=120.0,
                )
                if response.status_code != 503:
                    return up, time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"bioident serve did not answer within {STARTUP_TIMEOUT_S:.0f} s")


def run_mode(http: httpx.Client, key: str, real: list[dict], mode: str, payments: int) -> dict:
    results = []
    for i in range(payments + 1):  # the first one warms the path and is not counted
        customer = real[i % len(real)]
        probe = FVC / "DB1_B" / f"{customer['finger']}_5.tif"
        data = {"finger_position": "2", "purpose": PURPOSE}
        if mode == "card":
            data["payment_token"] = customer["token"]
        elif mode == "pin":
            data["pin"] = PIN
        started = time.perf_counter()
        response = http.post(
            "/v1/fingerprint/pay",
            data=data,
            files=[("finger", (probe.name, probe.read_bytes(), "image/tiff"))],
            headers={"Authorization": f"Bearer {key}"},
            timeout=120.0,
        )
        elapsed = time.perf_counter() - started
        body = response.json()
        if i:
            results.append(
                (
                    elapsed,
                    response.status_code,
                    body.get("decision"),
                    body.get("payment_token") == customer["token"],
                    body.get("payment_token"),
                )
            )
    latencies = np.array([r[0] for r in results])
    return {
        "mode": mode,
        "payments": len(results),
        "statuses": sorted({r[1] for r in results}),
        "latency_ms": {
            "p50": float(np.percentile(latencies, 50) * 1000),
            "p95": float(np.percentile(latencies, 95) * 1000),
            "max": float(latencies.max() * 1000),
        },
        "accepted_right_customer": sum(r[3] for r in results),
        "accepted_wrong_customer": sum(r[2] == "accept" and not r[3] for r in results),
        "rejected": sum(r[2] == "reject" for r in results),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--fingers", type=int, default=10_000, help="enrolled fingers in all (default 10000)")
    parser.add_argument("--payments", type=int, default=20, help="timed payments per mode (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.fingers < 2 * REAL_CUSTOMERS or args.payments < 1:
        parser.error(f"--fingers must be at least {2 * REAL_CUSTOMERS} and --payments at least 1")
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="bioident-till-") as tmp:
        key, real, figures = seed(Path(tmp), args.fingers, rng)
        if not real:
            raise SystemExit("no real customer could be enrolled from the FVC impressions")
        server = Server(Path(tmp), None)
        try:
            probe = FVC / "DB1_B" / f"{real[0]['finger']}_5.tif"
            figures["server_start_s"], figures["gallery_ready_s"] = wait_until_up(server, key, probe)
            try:
                with httpx.Client(base_url=server.url) as http:
                    modes = [run_mode(http, key, real, mode, args.payments) for mode in ("card", "pin", "finger")]
            except httpx.TransportError as exc:  # the server went away: say what its log said last
                code = server.process.poll()
                raise SystemExit(
                    f"the server stopped answering ({exc}; exit code {code}): {server._log_tail()}"
                ) from exc
        finally:
            server.stop()
    report = {"cpu_count": os.cpu_count(), "seed": args.seed, **figures, "modes": modes}
    print(
        f"\n{figures['fingers']} fingers enrolled ({figures['subjects']} customers, {figures['real_customers']} real); "
        f"server up in {figures['server_start_s']:.1f} s (voice model), "
        f"gallery ready in {figures['gallery_ready_s']:.1f} s"
    )
    print(f"{'mode':<8}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}  right / wrong / rejected")
    for m in modes:
        ms = m["latency_ms"]
        print(
            f"{m['mode']:<8}{ms['p50']:>9.0f}{ms['p95']:>9.0f}{ms['max']:>9.0f}  "
            f"{m['accepted_right_customer']} / {m['accepted_wrong_customer']} / {m['rejected']}"
        )
    write_results(args.out, report)
    return report


if __name__ == "__main__":
    main()
