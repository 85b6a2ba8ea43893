"""Service errors. Each has a stable problem type; ``service.problems`` turns them into problem+json."""

from __future__ import annotations


class ServiceError(Exception):
    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, detail: str, *, reasons: list[dict] | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reasons = reasons
        self.retry_after_s = retry_after_s  # sent as Retry-After: when a client may usefully try again

    @property
    def refuses_attempt(self) -> bool:
        """Whether this answers an attempt as refused (audited as such), rather than as a fault of the service."""
        return self.status < 500


class Unauthorized(ServiceError):
    status, code, title = 401, "unauthorized", "Missing or invalid API key"


class Forbidden(ServiceError):
    status, code, title = 403, "forbidden", "Not allowed for this client"


class ConsentRequired(ServiceError):
    status, code, title = 403, "consent_required", "No active consent"


class ReconsentRequired(ServiceError):
    status, code, title = 403, "reconsent_required", "Fresh consent needed"


class OptedOut(ServiceError):
    status, code, title = 403, "opted_out", "The customer asked never to be enrolled"


class NotFound(ServiceError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(ServiceError):
    status, code, title = 409, "conflict", "Conflict"


class QualityFailed(ServiceError):
    status, code, title = 422, "quality_failed", "The sample did not pass the quality gates"


class LockedOut(ServiceError):
    status, code, title = 423, "locked_out", "Too many failed verifications"


class RateLimited(ServiceError):
    status, code, title = 429, "rate_limited", "Too many requests"
