"""Accuracy-audit and deployment-report bodies."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

from biometrics.evaluation.trials import DEFAULT_MAX_GENUINE, DEFAULT_MAX_IMPOSTORS
from service.trail.schemas import ChainOut


class AuditIn(BaseModel):
    dataset: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.-][A-Za-z0-9_./-]*$",
        description="a folder below BIOIDENT_AUDIT_DATASETS_DIR",
    )
    channel: Literal["clean", "telephone", "mixed"] = "clean"
    max_impostors: int = Field(
        default=DEFAULT_MAX_IMPOSTORS, ge=1, le=10_000_000, description="different-subject pairs, sampled beyond it"
    )
    max_genuine: int = Field(
        default=DEFAULT_MAX_GENUINE, ge=1, le=10_000_000, description="same-subject pairs, sampled beyond it"
    )


class AuditStartedOut(BaseModel):
    id: str
    status: str


class AuditStatusOut(BaseModel):
    id: str
    status: str = Field(description="queued, running, done or failed")
    params: dict[str, Any]
    created_at: dt.datetime
    finished_at: dt.datetime | None
    error: str | None
    results: dict[str, Any] | None = Field(default=None, description="the report's headline figures, once done")


class KeyVersionOut(BaseModel):
    version: int
    status: str


class KeysOut(BaseModel):
    active_version: int
    versions: list[KeyVersionOut]
    data_keys_by_version: dict[str, int]
    keyring_id: str | None = Field(description="the keyring the database is bound to")
    min_wrap_version: int = Field(description="replicas whose keyring is older may not wrap new data keys")


class LockoutsOut(BaseModel):
    subjects_locked_now: int
    lockout_events: int


class ConsentCountsOut(BaseModel):
    active: int
    withdrawn: int


class ModelOut(BaseModel):
    model_config = {"protected_namespaces": ()}

    fingerprint: str = Field(description="what determines whether embeddings (and so templates) are comparable")
    precision: Literal["fp32", "bf16"] = Field(
        description="the precision of the model's matrix products (BIOIDENT_PRECISION); not part of the "
        "fingerprint, since embeddings of either agree to cosine >= 0.9999"
    )


class DeploymentReportOut(BaseModel):
    scope: str
    generated_at: str
    enrolled_subjects: dict[str, int]
    consents: dict[str, ConsentCountsOut]
    lockouts: LockoutsOut
    keys: KeysOut
    audit_chain: ChainOut
    operating_points: dict[str, Any] = Field(
        description="per pair of channels (enrolment/probe): method, threshold, and its source (cohort at the "
        "target FMR, calibration file, override), or an error when the configured scoring cannot be built"
    )
    model: ModelOut | None = Field(None, description="the model in use: its fingerprint and precision")
