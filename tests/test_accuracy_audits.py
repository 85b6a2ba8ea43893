"""Audits for security teams through the API and the CLI: accuracy jobs and the deployment audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biometrics.evaluation.accuracy_report import AccuracyReport
from tests.audit_reports import STORED_BEFORE_CALIBRATION
from tests.conftest import TEST_OTHER
from tests.operations_fixtures import _rows
from tests.voice_helpers import _consent, _enrol

pytestmark = pytest.mark.model

SPEAKERS = ["1688", "2033", "2414"]


@pytest.fixture
def audit_datasets(tmp_path):
    """A small dataset folder (3 speakers x 3 recordings, links to the shared data) below the audit root."""
    root = tmp_path / "audit-datasets"
    for speaker in SPEAKERS:
        folder = root / "callers" / speaker
        folder.mkdir(parents=True)
        for path in sorted((TEST_OTHER / speaker).glob("*.flac"))[-3:]:
            (folder / path.name).symlink_to(path)
    return root


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_an_auditor_starts_an_audit_and_fetches_its_report(api, audit_datasets):
    api.ctx.settings.audit_datasets_dir = audit_datasets
    api.tenant("bank")
    auditor = api.headers(api.client("bank", "auditor"))
    started = api.http.post("/v1/audits", json={"dataset": "callers"}, headers=auditor)
    assert started.status_code == 202, started.text
    job = started.json()["id"]
    status = api.http.get(f"/v1/audits/{job}", headers=auditor).json()
    assert status["status"] == "done", status
    assert status["results"]["genuine_trials"] + status["results"]["impostor_trials"] > 0
    report = api.http.get(f"/v1/audits/{job}/report", headers=auditor).json()
    assert {"eer", "min_dcf", "fnmr_at_fmr", "fte", "fta", "model_fingerprint", "dataset_sha256"} <= report.keys()
    html = api.http.get(f"/v1/audits/{job}/report.html", headers=auditor)
    assert html.status_code == 200 and "data:image/png;base64," in html.text
    api.tenant("shop")
    other_auditor = api.headers(api.client("shop", "auditor"))
    assert api.http.get(f"/v1/audits/{job}", headers=other_auditor).status_code == 404
    ivr = api.headers(api.client("bank", "ivr"))
    assert api.http.post("/v1/audits", json={"dataset": "callers"}, headers=ivr).status_code == 403
    actions = [e["action"] for e in api.http.get("/v1/audit/entries", headers=auditor).json()["entries"]]
    assert "audit.start" in actions and "audit.finish" in actions


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_report_stored_by_an_earlier_version_is_served_as_it_was_stored(api):
    from service.store.models import AuditJob

    api.tenant("bank")
    auditor = api.headers(api.client("bank", "auditor"))
    with api.ctx.db.session() as session:
        job = AuditJob(tenant_id="bank", requested_by="cli_x", params={"dataset": "callers"}, status="done")
        job.report = STORED_BEFORE_CALIBRATION
        session.add(job)
        session.flush()
        job_id = job.id
    report = api.http.get(f"/v1/audits/{job_id}/report", headers=auditor)
    assert report.status_code == 200 and report.json() == STORED_BEFORE_CALIBRATION
    assert json.dumps(report.json()) == json.dumps(STORED_BEFORE_CALIBRATION)  # keys in the same order
    assert "calibration" not in report.json()["scoring"]  # nothing the earlier version did not write
    html = api.http.get(f"/v1/audits/{job_id}/report.html", headers=auditor)
    assert html.status_code == 200 and "data:image/png;base64," in html.text


def test_new_jobs_keep_the_headline_results_that_migrated_jobs_were_given():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "service/store/migrations/versions/0006_audit_job_results.py"
    spec = importlib.util.spec_from_file_location("migration_0006", path)
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    assert AccuracyReport.HEADLINE_FIELDS == migration.RESULT_KEYS


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_audits_cannot_reach_outside_the_datasets_directory(api, audit_datasets):
    api.tenant("bank")
    auditor = api.headers(api.client("bank", "auditor"))
    assert api.http.post("/v1/audits", json={"dataset": "callers"}, headers=auditor).status_code == 409  # not enabled
    api.ctx.settings.audit_datasets_dir = audit_datasets
    for name in ("../audit-datasets", "/etc", "callers/../..", "missing"):
        response = api.http.post("/v1/audits", json={"dataset": name}, headers=auditor)
        assert response.status_code in (404, 422), (name, response.status_code)
    (audit_datasets / "one").mkdir()
    (audit_datasets / "one" / SPEAKERS[0]).symlink_to(audit_datasets / "callers" / SPEAKERS[0])
    failed = api.http.post("/v1/audits", json={"dataset": "one"}, headers=auditor).json()
    status = api.http.get(f"/v1/audits/{failed['id']}", headers=auditor).json()
    assert status["status"] == "failed" and status["error"].startswith("one "), status  # one speaker: no impostors
    assert str(audit_datasets) not in status["error"]  # where the server keeps its datasets is not the auditor's


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_the_deployment_audit_counts_enrolments_consents_keys_and_checks_the_chain(api, monkeypatch, capsys):
    api.tenant("bank")
    keys = {role: api.client("bank", role) for role in ("ivr", "portal", "auditor")}
    consent = _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    _consent(api, keys["portal"], reference="ACC-2002")
    second = api.http.get(
        "/v1/subjects/" + consent["subject_token"] + "/consents", headers=api.headers(keys["portal"])
    ).json()
    assert len(second) == 1
    report = api.http.get("/v1/audit/deployment", headers=api.headers(keys["auditor"])).json()
    assert report["enrolled_subjects"] == {"voice": 1}
    assert report["consents"] == {"voice": {"active": 2, "withdrawn": 0}}
    assert report["keys"]["active_version"] == 1 and report["keys"]["data_keys_by_version"] == {"1": 1}
    bound = _rows(api.ctx.db.url, "SELECT keyring_id, min_wrap_version FROM keyring_state")
    assert [(report["keys"]["keyring_id"], report["keys"]["min_wrap_version"])] == bound
    assert bound[0][0] == api.ctx.keyring.identity()
    assert report["audit_chain"]["ok"] is True and report["lockouts"]["subjects_locked_now"] == 0
    # The model in use and the precision its embeddings are computed in (BIOIDENT_PRECISION), side by side.
    assert report["model"] == {"fingerprint": api.ctx.embedder.fingerprint, "precision": api.ctx.embedder.precision}

    from service.cli import main

    monkeypatch.setenv("BIOIDENT_DATABASE_URL", api.ctx.db.url)
    monkeypatch.setenv("BIOIDENT_DATA_DIR", str(api.data_dir))
    assert main(["audit", "deployment"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert whole["scope"] == "deployment" and whole["enrolled_subjects"] == {"voice": 1}


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_an_audit_whose_replica_stopped_is_reported_failed_not_running_forever(api):
    import datetime as dt

    from service.accuracy.jobs import STALE_AFTER
    from service.store.models import AuditJob

    api.tenant("bank")
    auditor = api.headers(api.client("bank", "auditor"))
    now = dt.datetime.now(dt.UTC)
    with api.ctx.db.session() as session:
        alive = AuditJob(tenant_id="bank", requested_by="cli_x", params={"dataset": "callers"}, status="running")
        alive.heartbeat_at = now
        stopped = AuditJob(tenant_id="bank", requested_by="cli_x", params={"dataset": "callers"}, status="running")
        stopped.heartbeat_at = now - 2 * STALE_AFTER
        never_started = AuditJob(tenant_id="bank", requested_by="cli_x", params={"dataset": "callers"})
        never_started.created_at = now - 2 * STALE_AFTER
        session.add_all([alive, stopped, never_started])
        session.flush()
        ids = alive.id, stopped.id, never_started.id

    assert api.http.get(f"/v1/audits/{ids[0]}", headers=auditor).json()["status"] == "running"
    for job_id in ids[1:]:
        status = api.http.get(f"/v1/audits/{job_id}", headers=auditor).json()
        assert status["status"] == "failed" and "stopped" in status["error"], status
        report = api.http.get(f"/v1/audits/{job_id}/report", headers=auditor)
        assert report.status_code == 409
    entries = api.http.get("/v1/audit/entries", headers=auditor).json()["entries"]
    finished = [e for e in entries if e["action"] == "audit.finish"]
    assert sorted(e["details"]["job_id"] for e in finished) == sorted(ids[1:])  # recorded once each
    assert all(e["outcome"] == "failed" for e in finished)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_job_recorded_as_stopped_stays_failed_when_its_frozen_replica_finishes_late(api, monkeypatch):
    import datetime as dt

    from sqlalchemy import update

    from service.accuracy import jobs as audits
    from service.store.models import AuditJob

    api.tenant("bank")
    auditor = api.headers(api.client("bank", "auditor"))
    stale = dt.datetime.now(dt.UTC) - 2 * audits.STALE_AFTER
    with api.ctx.db.session() as session:
        late, never_run = (AuditJob(tenant_id="bank", requested_by="cli_x", params={"dataset": "d"}) for _ in range(2))
        never_run.created_at = stale
        session.add_all([late, never_run])
        session.flush()
        late_id, never_run_id = late.id, never_run.id

    def frozen_then_finished(ctx, params):
        # While this replica is frozen its heartbeat stops, and another replica answers a status poll.
        with ctx.db.session() as session:
            session.execute(update(AuditJob).where(AuditJob.id == late_id).values(heartbeat_at=stale))
        assert api.http.get(f"/v1/audits/{late_id}", headers=auditor).json()["status"] == "failed"
        return AccuracyReport.from_dict(STORED_BEFORE_CALIBRATION), None

    monkeypatch.setattr(audits, "_run_audit", frozen_then_finished)
    audits.run_audit_job(api.ctx, late_id)
    assert api.http.get(f"/v1/audits/{never_run_id}", headers=auditor).json()["status"] == "failed"
    monkeypatch.setattr(audits, "_run_audit", lambda ctx, params: pytest.fail("ran a job recorded failed"))
    audits.run_audit_job(api.ctx, never_run_id)

    for job_id in (late_id, never_run_id):
        status = api.http.get(f"/v1/audits/{job_id}", headers=auditor).json()
        assert status["status"] == "failed" and "stopped" in status["error"], status
    entries = api.http.get("/v1/audit/entries", headers=auditor).json()["entries"]
    finished = [(e["details"]["job_id"], e["outcome"]) for e in entries if e["action"] == "audit.finish"]
    assert sorted(finished) == sorted([(late_id, "failed"), (never_run_id, "failed")])  # one entry each


def test_a_running_audit_keeps_its_heartbeat_fresh(api, monkeypatch):
    import datetime as dt
    import time

    from service.accuracy import jobs as audits
    from service.store.models import AuditJob

    monkeypatch.setattr(audits, "HEARTBEAT_S", 0.05)
    api.tenant("bank")
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with api.ctx.db.session() as session:
        job = AuditJob(tenant_id="bank", requested_by="cli_x", params={}, status="running")
        job.heartbeat_at = old
        session.add(job)
        session.flush()
        job_id = job.id
    with audits._Heartbeat(api.ctx, job_id):
        time.sleep(0.4)
    with api.ctx.db.session() as session:
        beat = session.get(AuditJob, job_id).heartbeat_at
    assert dt.datetime.now(dt.UTC) - beat < dt.timedelta(seconds=5)


def _held_audit(api, dataset: str):
    """An audit this replica accepted whose background task has not run yet."""
    from service.accuracy import jobs as audits
    from service.auth import Principal, Role

    return audits.start_audit(api.ctx, Principal("cli_x", "bank", Role.AUDITOR), dataset, "clean", 100)


def _audits_recorded(api, auditor: dict) -> tuple[int, int]:
    from sqlalchemy import func, select

    from service.store.models import AuditJob

    with api.ctx.db.session() as session:
        jobs = session.scalar(select(func.count()).select_from(AuditJob))
    entries = api.http.get("/v1/audit/entries", headers=auditor).json()["entries"]
    return jobs, sum(e["action"] == "audit.start" for e in entries)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_replica_holds_one_audit_at_a_time_and_asks_for_more_later(api, replica, tmp_path, monkeypatch):
    from service.accuracy import jobs as audits

    (tmp_path / "datasets" / "many").mkdir(parents=True)
    api.ctx.settings.audit_datasets_dir = tmp_path / "datasets"  # the replica's settings too
    ran = []

    def quick(ctx, params):
        ran.append((ctx, params))
        return AccuracyReport.from_dict(STORED_BEFORE_CALIBRATION), None

    monkeypatch.setattr(audits, "_run_audit", quick)
    api.tenant("bank")
    auditor = api.headers(api.client("bank", "auditor"))
    held = _held_audit(api, "many")

    for _ in range(3):  # a queued audit holds the replica's place as a running one does
        busy = api.http.post("/v1/audits", json={"dataset": "many"}, headers=auditor)
        assert busy.status_code == 429 and busy.headers["content-type"] == "application/problem+json"
        assert busy.json()["type"].endswith("/audits_busy") and int(busy.headers["Retry-After"]) > 0
    assert _audits_recorded(api, auditor) == (1, 1)  # nothing recorded for a refused one: it is simply asked again

    http, replica_ctx = replica  # another replica has a place of its own
    other = http.post("/v1/audits", json={"dataset": "many", "max_genuine": 5000}, headers=auditor)
    assert other.status_code == 202, other.text
    status = api.http.get(f"/v1/audits/{other.json()['id']}", headers=auditor).json()
    assert status["status"] == "done" and status["params"]["max_genuine"] == 5000
    assert [(ctx, params["max_genuine"]) for ctx, params in ran] == [(replica_ctx, 5000)]

    audits.run_audit_job(api.ctx, held.id)  # once the held audit has run, the next one is taken
    started = api.http.post("/v1/audits", json={"dataset": "many"}, headers=auditor)
    assert started.status_code == 202, started.text
    assert api.http.get(f"/v1/audits/{started.json()['id']}", headers=auditor).json()["status"] == "done"
    assert len(ran) == 3 and _audits_recorded(api, auditor) == (3, 3)

    api.ctx.settings.audit_max_concurrent = 2  # BIOIDENT_AUDIT_MAX_CONCURRENT
    second_held = _held_audit(api, "many")
    assert api.http.post("/v1/audits", json={"dataset": "many"}, headers=auditor).status_code == 202
    assert api.http.post("/v1/audits", json={"dataset": "many"}, headers=auditor).status_code == 202
    _held_audit(api, "many")
    assert api.http.post("/v1/audits", json={"dataset": "many"}, headers=auditor).status_code == 429
    audits.run_audit_job(api.ctx, second_held.id)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_audit_whose_task_never_started_gives_its_place_back(api, tmp_path, monkeypatch):
    import datetime as dt

    from sqlalchemy import update

    from service.accuracy import jobs as audits
    from service.store.models import AuditJob

    (tmp_path / "datasets" / "many").mkdir(parents=True)
    api.ctx.settings.audit_datasets_dir = tmp_path / "datasets"
    monkeypatch.setattr(
        audits, "_run_audit", lambda ctx, params: (AccuracyReport.from_dict(STORED_BEFORE_CALIBRATION), None)
    )
    api.tenant("bank")
    auditor = api.headers(api.client("bank", "auditor"))
    lost = _held_audit(api, "many")  # say its response never went out, so its background task never ran
    assert api.http.post("/v1/audits", json={"dataset": "many"}, headers=auditor).status_code == 429
    with api.ctx.db.session() as session:
        stale = dt.datetime.now(dt.UTC) - 2 * audits.STALE_AFTER
        session.execute(update(AuditJob).where(AuditJob.id == lost.id).values(created_at=stale))
    started = api.http.post("/v1/audits", json={"dataset": "many"}, headers=auditor)
    assert started.status_code == 202, started.text
    status = api.http.get(f"/v1/audits/{lost.id}", headers=auditor).json()
    assert status["status"] == "failed" and "stopped" in status["error"], status  # recorded, as a poll would
    monkeypatch.setattr(audits, "_run_audit", lambda ctx, params: pytest.fail("ran a job recorded failed"))
    audits.run_audit_job(api.ctx, lost.id)  # its task, if it ever starts, does not run it
    entries = api.http.get("/v1/audit/entries", headers=auditor).json()["entries"]
    finished = [(e["details"]["job_id"], e["outcome"]) for e in entries if e["action"] == "audit.finish"]
    assert sorted(finished) == sorted([(lost.id, "failed"), (started.json()["id"], "done")])
