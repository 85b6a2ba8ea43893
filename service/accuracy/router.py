"""Accuracy audits through the API (auditor role): start one, poll it, fetch its report; the deployment report."""

from __future__ import annotations

from fastapi import APIRouter, BackgroundTasks, Depends
from fastapi.responses import HTMLResponse

from biometrics.evaluation.accuracy_report import AccuracyReport
from biometrics.evaluation.report import render_html
from service.accuracy.deployment import deployment_report
from service.accuracy.jobs import finished_report, job_status, run_audit_job, start_audit
from service.accuracy.schemas import AuditIn, AuditStartedOut, AuditStatusOut, DeploymentReportOut
from service.auth import Principal, Role
from service.context import ServiceContext
from service.deps import get_ctx, id_path, require

router = APIRouter(prefix="/v1", tags=["audits"])
auditor = require(Role.AUDITOR)


@router.post("/audits", status_code=202, response_model=AuditStartedOut)
def start(
    body: AuditIn, tasks: BackgroundTasks, ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(auditor)
) -> AuditStartedOut:
    job = start_audit(ctx, actor, body.dataset, body.channel, body.max_impostors, body.max_genuine)
    tasks.add_task(run_audit_job, ctx, job.id)
    return AuditStartedOut(id=job.id, status=job.status)


@router.get("/audits/{job_id}", response_model=AuditStatusOut)
def status(
    job_id: str = id_path(), ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(auditor)
) -> AuditStatusOut:
    job = job_status(ctx, actor, job_id)
    return AuditStatusOut(
        id=job.id,
        status=job.status,
        params=job.params,
        created_at=job.created_at,
        finished_at=job.finished_at,
        error=job.error,
        results=job.results,
    )


@router.get("/audits/{job_id}/report", response_model=AccuracyReport)
def report_json(
    job_id: str = id_path(), ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(auditor)
) -> AccuracyReport:
    return finished_report(ctx, actor, job_id)


@router.get("/audits/{job_id}/report.html", response_class=HTMLResponse)
def report_html(
    job_id: str = id_path(), ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(auditor)
) -> HTMLResponse:
    return HTMLResponse(render_html(finished_report(ctx, actor, job_id)))


@router.get("/audit/deployment", response_model=DeploymentReportOut)
def deployment(ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(auditor)) -> dict:
    with ctx.db.session() as session:
        model = {"fingerprint": ctx.embedder.fingerprint, "precision": ctx.embedder.precision}
        return deployment_report(
            session, ctx.keyring, ctx.settings, tenant_id=actor.tenant_id, scoring=ctx.scoring, model=model
        )
