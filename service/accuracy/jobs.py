"""Accuracy audits started through the API: jobs in the database, run in the background, that survive replicas.

Each replica holds at most ``audit_max_concurrent`` of them, queued or running, at once (an audit holds its
dataset's trials and scores in the replica's memory). Past that a new one is refused with 429 and Retry-After,
before anything is recorded, instead of waiting in a queue: a job that has not started within ``STALE_AFTER``
is taken to have lost its replica (it has no heartbeat yet), so a queue would fail the jobs waiting in it. A
queued job whose background task never started gives its place back once it would be recorded stopped.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import weakref
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.orm import Session

from biometrics.errors import BiometricsError
from biometrics.evaluation.accuracy_report import AccuracyReport
from biometrics.evaluation.audit import run_audit
from biometrics.evaluation.trials import DEFAULT_MAX_GENUINE
from biometrics.torch_thread import background
from service.auth import Principal
from service.context import ServiceContext
from service.errors import Conflict, NotFound, ServiceError
from service.store.models import (
    AuditJob,
    new_id,
    utcnow,
)
from service.trail.chain import append, record_event

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
# A queued or running job whose replica has not written for this long is taken to have stopped with it.
STALE_AFTER = dt.timedelta(seconds=HEARTBEAT_S * 8)
STOPPED = "the replica running this audit stopped before it finished; start it again"
BUSY_RETRY_AFTER_S = 60


class AuditsBusy(ServiceError):
    status, code, title = 429, "audits_busy", "Too many audits running"


class _Slots:
    """The API audits this process accepted and has not finished: queued (its background task not yet
    started) or running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: set[str] = set()
        self._running: set[str] = set()

    def take(self, job_id: str, most: int) -> bool:
        with self._lock:
            if len(self._queued) + len(self._running) >= most:
                return False
            self._queued.add(job_id)
            return True

    def queued(self) -> list[str]:
        with self._lock:
            return sorted(self._queued)

    def running(self, job_id: str) -> None:
        with self._lock:
            self._queued.discard(job_id)
            self._running.add(job_id)

    def release(self, job_id: str, *, only_queued: bool = False) -> None:
        with self._lock:
            self._queued.discard(job_id)
            if not only_queued:
                self._running.discard(job_id)


_slots: weakref.WeakKeyDictionary[ServiceContext, _Slots] = weakref.WeakKeyDictionary()
_slots_lock = threading.Lock()


def _slots_of(ctx: ServiceContext) -> _Slots:
    with _slots_lock:
        return _slots.setdefault(ctx, _Slots())


def dataset_path(ctx: ServiceContext, name: str) -> Path:
    """A dataset folder below the configured audit directory; nothing outside it can be named. What a dataset
    folder holds, links to recordings kept elsewhere included, is the operator's who fills the directory."""
    root = ctx.settings.audit_datasets_dir
    if root is None:
        raise Conflict("audits through the API are not enabled: set BIOIDENT_AUDIT_DATASETS_DIR")
    root = Path(root).resolve()
    candidate = (root / name).resolve()
    if not candidate.is_relative_to(root) or candidate == root or not candidate.is_dir():
        raise NotFound("no such dataset in the audit datasets directory")
    return candidate


def start_audit(
    ctx: ServiceContext,
    actor: Principal,
    dataset: str,
    channel: str,
    max_impostors: int,
    max_genuine: int = DEFAULT_MAX_GENUINE,
) -> AuditJob:
    """Records a queued job; ``AuditsBusy`` (nothing recorded) while this replica has as many as it may run."""
    dataset_path(ctx, dataset)
    slots, job_id = _slots_of(ctx), new_id("aud")
    if not slots.take(job_id, ctx.settings.audit_max_concurrent) and not (
        _release_lapsed(ctx, slots) and slots.take(job_id, ctx.settings.audit_max_concurrent)
    ):
        raise AuditsBusy(
            "this server is running as many accuracy audits as it may at once; start this one when they finish",
            retry_after_s=BUSY_RETRY_AFTER_S,
        )
    try:
        with ctx.db.session() as session:
            job = AuditJob(
                id=job_id,
                tenant_id=actor.tenant_id,
                requested_by=actor.client_id,
                params={
                    "dataset": dataset,
                    "channel": channel,
                    "max_impostors": max_impostors,
                    "max_genuine": max_genuine,
                },
            )
            session.add(job)
            session.flush()
            record_event(
                session,
                actor,
                action="audit.start",
                outcome="queued",
                details={"job_id": job.id, **job.params},
            )
    except BaseException:
        slots.release(job_id)
        raise
    return job


def _release_lapsed(ctx: ServiceContext, slots: _Slots) -> bool:
    """Gives back the slots of this replica's queued jobs that will never run: those whose background task has
    not started within ``STALE_AFTER`` (recorded stopped, as a status poll would) or that are no longer queued."""
    released = False
    with ctx.db.session() as session:
        for job_id in slots.queued():
            job = session.get(AuditJob, job_id, with_for_update=True)
            if job is None:  # not committed yet by the request starting it (a failed start gives its slot back)
                continue
            _fail_if_stopped(session, job)
            if job.status != "queued":
                slots.release(job_id, only_queued=True)
                released = True
    return released


class _Heartbeat:
    """Stamps a running job's row every ``HEARTBEAT_S`` so other replicas can tell it is alive."""

    def __init__(self, ctx: ServiceContext, job_id: str) -> None:
        self._ctx, self._job_id, self._stop = ctx, job_id, threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                with self._ctx.db.session() as session:
                    session.execute(
                        update(AuditJob)
                        .where(AuditJob.id == self._job_id, AuditJob.status == "running")
                        .values(heartbeat_at=utcnow())
                    )
            except Exception as exc:  # a missed beat is retried; the job itself goes on
                log.warning("audit job heartbeat failed (%s)", type(exc).__name__)


def run_audit_job(ctx: ServiceContext, job_id: str) -> None:
    """Runs a queued audit (in the background); its outcome is written to the job row and the trail."""
    slots = _slots_of(ctx)
    slots.running(job_id)
    try:
        _run_job(ctx, job_id)
    finally:
        slots.release(job_id)


def _run_job(ctx: ServiceContext, job_id: str) -> None:
    with ctx.db.session() as session:
        job = session.get(AuditJob, job_id, with_for_update=True)
        if job is not None:
            _fail_if_stopped(session, job)  # queued too long to start now: a poll would say it stopped
        if job is None or job.status != "queued":  # gone, or recorded failed (stopped) before we got to it
            log.warning("audit job %s is %s, not queued: not running it", job_id, job and job.status)
            return
        job.status, job.heartbeat_at = "running", utcnow()
        params, actor = dict(job.params), job.requested_by
    with _Heartbeat(ctx, job_id), background():  # live verifications go ahead of the audit's model work
        report, error = _run_audit(ctx, params)
    with ctx.db.session() as session:
        job = session.get(AuditJob, job_id, with_for_update=True)
        if job is None or job.status != "running":
            # Another replica saw no heartbeat for STALE_AFTER (this one was frozen or cut off) and recorded
            # the job failed, telling the auditor to start it again. That record and its trail entry stand.
            log.warning("audit job %s finished but is %s: its result is discarded", job_id, job and job.status)
            return
        if report is None:
            job.status, job.report, job.results, job.error = "failed", None, None, error[:500]
        else:  # a status poll reads the headline results, not the whole report
            job.status, job.report, job.results, job.error = "done", report.to_dict(), report.headline(), None
        job.finished_at = utcnow()
        _record_finish(session, job, actor, report)


def _run_audit(ctx: ServiceContext, params: dict) -> tuple[AccuracyReport | None, str | None]:
    report, error, path = None, None, None
    try:
        path = dataset_path(ctx, params["dataset"])
        report = run_audit(
            ctx.embedder,
            path,
            ctx.settings,
            params["channel"],
            calibration=ctx.scoring.calibration,  # the cohorts and target FMR come from the settings, as the service's
            max_impostors=params["max_impostors"],
            max_genuine=params.get("max_genuine", DEFAULT_MAX_GENUINE),  # jobs queued before the cap had none
            command=f"POST /v1/audits dataset={params['dataset']} channel={params['channel']}",
        )
    except (BiometricsError, ServiceError) as exc:
        error = exc.message if isinstance(exc, BiometricsError) else exc.detail
        if path is not None:  # the auditor named the dataset; where the server keeps it is not theirs to see
            error = error.replace(str(path), params["dataset"])
    except Exception as exc:  # a background job must always end in a recorded state
        error = f"internal error ({type(exc).__name__})"
    return report, error


def _record_finish(session: Session, job: AuditJob, actor: str, report: AccuracyReport | None) -> None:
    append(
        session,
        actor=actor,
        action="audit.finish",
        outcome=job.status,
        tenant_id=job.tenant_id,
        model_fingerprint=None if report is None else report.model_fingerprint,
        details={"job_id": job.id, "eer": None if report is None else report.eer},
    )


def _fail_if_stopped(session: Session, job: AuditJob) -> None:
    """Marks a queued or running job failed when the replica that had it stopped writing its heartbeat."""
    if job.status not in ("queued", "running"):
        return
    if utcnow() - (job.heartbeat_at or job.created_at) < STALE_AFTER:
        return
    job.status, job.error, job.finished_at = "failed", STOPPED, utcnow()
    _record_finish(session, job, "service", None)


def job_in_tenant(session: Session, actor: Principal, job_id: str) -> AuditJob:
    # Locked: two replicas answering at once must not both mark a stopped job failed.
    job = session.get(AuditJob, job_id, with_for_update=True)
    if job is None or job.tenant_id != actor.tenant_id:
        raise NotFound("no such audit")
    _fail_if_stopped(session, job)
    return job


def job_status(ctx: ServiceContext, actor: Principal, job_id: str) -> AuditJob:
    with ctx.db.session() as session:
        return job_in_tenant(session, actor, job_id)


def finished_report(ctx: ServiceContext, actor: Principal, job_id: str) -> AccuracyReport:
    """A finished job's report, read back from what was stored (by this version or an earlier one)."""
    with ctx.db.session() as session:
        job = job_in_tenant(session, actor, job_id)
        if job.report is None:
            raise Conflict(f"the audit is {job.status}; the report exists once it is done")
        return AccuracyReport.from_dict(job.report)
