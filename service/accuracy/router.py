"""Accuracy audits through the API (auditor role): start one, poll it, fetch its report."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, BackgroundTasks, Depends
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from biometrics.evaluation.report import render_html
from service.api.deps import get_ctx, id_path, require
from service.audits import deployment_report, job_in_tenant, run_audit_job, start_audit
from service.auth import Principal, Role
from service.context import ServiceContext
from service.errors import Conflict

router = APIRouter(prefix="/v1", tags=["audits"])
auditor = require(Role.AUDITOR)


class AuditIn(BaseModel):
    dataset: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.-][A-Za-z0-9_./-]*$",
        description="a folder below BIOIDENT_AUDIT_DATASETS_DIR",
    )
    channel: Literal["clean", "telephone"] = "clean"
    max_impostors: int = Field(default=100_000, ge=1, le=10_000_000)


def _summary(job) -> dict:  # noqa: ANN001
    body = {
        "id": job.id,
        "status": job.status,
        "params": job.params,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "error": job.error,
    }
    if job.results is not None:
        body["results"] = job.results
    return body


@router.post("/audits", status_code=202)
def start(
    body: AuditIn, tasks: BackgroundTasks, ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(auditor)
) -> dict:
    job = start_audit(ctx, actor, body.dataset, body.channel, body.max_impostors)
    tasks.add_task(run_audit_job, ctx, job.id)
    return {"id": job.id, "status": job.status}


@router.get("/audits/{job_id}")
def status(
    job_id: str = id_path(), ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(auditor)
) -> dict:
    with ctx.db.session() as session:
        return _summary(job_in_tenant(session, actor, job_id))


def _finished_report(ctx: ServiceContext, actor: Principal, job_id: str) -> dict:
    with ctx.db.session() as session:
        job = job_in_tenant(session, actor, job_id)
        if job.report is None:
            raise Conflict(f"the audit is {job.status}; the report exists once it is done")
        return job.report


@router.get("/audits/{job_id}/report")
def report_json(
    job_id: str = id_path(), ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(auditor)
) -> dict:
    return _finished_report(ctx, actor, job_id)


@router.get("/audits/{job_id}/report.html", response_class=HTMLResponse)
def report_html(
    job_id: str = id_path(), ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(auditor)
) -> HTMLResponse:
    return HTMLResponse(render_html(_finished_report(ctx, actor, job_id)))


@router.get("/audit/deployment")
def deployment(ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(auditor)) -> dict:
    with ctx.db.session() as session:
        return deployment_report(session, ctx.keyring, ctx.settings, tenant_id=actor.tenant_id)
