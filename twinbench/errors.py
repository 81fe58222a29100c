"""Domain errors, free of gRPC; `twinbench.rpc.server` maps each to its status code in one place."""

from __future__ import annotations


class TwinbenchError(Exception):
    """An error whose message is safe and useful to show to the caller."""

    code = "INTERNAL"


class InvalidArgument(TwinbenchError):
    code = "INVALID_ARGUMENT"


class NotFound(TwinbenchError):
    code = "NOT_FOUND"


class Unavailable(TwinbenchError):
    code = "UNAVAILABLE"


class ResourceExhausted(TwinbenchError):
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(TwinbenchError):
    """A valid request that this service cannot carry out as it is (its hardware, its settings):
    the same request may succeed elsewhere, or here once that changes; retrying here will not."""

    code = "FAILED_PRECONDITION"


class DeadlineExceeded(TwinbenchError):
    code = "DEADLINE_EXCEEDED"


class UpstreamError(TwinbenchError):
    """A backend's own error, passed on with its code (its message is already meant for users)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class JobCancelled(Exception):
    """Raised inside a training loop when its job is cancelled; never reaches a client."""
