"""What an answer means: the exception for an error status or a transport failure, and whether
a failed attempt may be retried. Pure: no I/O."""

from __future__ import annotations

import httpx
from pydantic import BaseModel, ValidationError

from . import errors
from ._version import __version__
from .retry import RETRYABLE_STATUS_CODES, RetryPolicy
from .types import PROTOCOL_HEADER, PROTOCOL_VERSION, REQUEST_ID_HEADER, ErrorEnvelope

# --- retries ----------------------------------------------------------------------------------


def is_retryable_error(error: BaseException) -> bool:
    """Whether a transport failure may succeed on a new attempt.

    A ``RemoteProtocolError`` is a connection closed before or during the answer; retrying it is
    what makes a submit survive a cut connection (the idempotency key prevents a second job).
    """
    return isinstance(
        error, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError
    )


def should_retry(
    attempt: int,
    policy: RetryPolicy,
    *,
    status_code: int | None = None,
    error: BaseException | None = None,
) -> bool:
    """Whether attempt number ``attempt`` (0 for the first) may be followed by another."""
    if not policy.allows(attempt):
        return False
    if error is not None:
        return is_retryable_error(error)
    return status_code in RETRYABLE_STATUS_CODES


# --- error mapping ----------------------------------------------------------------------------


def error_class(status_code: int) -> type[errors.DeepExecError]:
    """The exception class for an HTTP error status (after retries)."""
    if status_code in (401, 403):
        return errors.MCPAuthenticationError
    if status_code == 404:
        return errors.MCPJobNotFoundError
    if status_code == 409:
        return errors.MCPConflictError
    if status_code in (400, 413, 415, 422):
        return errors.MCPValidationError
    if status_code == 429:
        return errors.MCPRateLimitError
    if status_code >= 500:
        return errors.MCPServerError
    return errors.MCPExecutionError


def _protocol_error(
    response: httpx.Response, message: str, error_type: str
) -> errors.MCPProtocolError:
    return errors.MCPProtocolError(
        message,
        status_code=response.status_code,
        error_type=error_type,
        request_id=response.headers.get(REQUEST_ID_HEADER),
    )


def protocol_problem(response: httpx.Response, base_url: str) -> errors.MCPProtocolError | None:
    """Why ``response`` is not from a DeepExec server speaking our protocol major, or None."""
    raw = response.headers.get(PROTOCOL_HEADER)
    where = f"{response.request.method} {response.request.url.path}"
    if raw is None:
        return _protocol_error(
            response,
            f"the server at {base_url} did not identify as DeepExec (no {PROTOCOL_HEADER} "
            f"header in its HTTP {response.status_code} answer to {where}) — is the base_url "
            "right?",
            "not_deepexec",
        )
    major = raw.split(".")[0].strip()
    if major != PROTOCOL_VERSION.split(".")[0]:
        return _protocol_error(
            response,
            f"the server at {base_url} speaks DeepExec protocol {raw!r}, this SDK "
            f"(deepexec-sdk {__version__}) speaks {PROTOCOL_VERSION!r}; upgrade the older one",
            "unsupported_protocol",
        )
    return None


def error_from_response(
    response: httpx.Response, base_url: str, auth_hint: str | None = None
) -> errors.DeepExecError:
    """The exception for a non-2xx ``response`` whose body has been read.

    ``auth_hint`` is appended to the message of 401/403 answers: how to configure a key.
    """
    status = response.status_code
    request_id = response.headers.get(REQUEST_ID_HEADER)
    url = str(response.request.url)
    if response.headers.get(PROTOCOL_HEADER) is None and status in (502, 503, 504):
        # A gateway between us and DeepExec answered: the server is down or restarting, which
        # is not a protocol mismatch.
        return errors.MCPServerError(
            f"HTTP {status} for {url} came from a proxy or gateway, not from DeepExec itself: "
            "the server behind it may be down or restarting",
            status_code=status,
            error_type="bad_gateway" if status == 502 else "unavailable",
            request_id=request_id,
        )
    problem = protocol_problem(response, base_url)
    if problem is not None:
        return problem
    if 300 <= status < 400:
        location = response.headers.get("location", "nowhere")
        return errors.MCPProtocolError(
            f"unexpected HTTP {status} redirect from {url} to {location} — is the base_url right?",
            status_code=status,
            error_type="unexpected_redirect",
            request_id=request_id,
        )
    try:
        body = ErrorEnvelope.model_validate_json(response.content).error
    except ValidationError:
        snippet = response.content[:200].decode("utf-8", errors="replace")
        return errors.MCPProtocolError(
            f"HTTP {status} from {url} without DeepExec's error envelope: {snippet!r}",
            status_code=status,
            error_type="invalid_error_body",
            request_id=request_id,
        )
    message = body.message
    if status in (401, 403) and auth_hint:
        message = f"{message} — {auth_hint}"
    return error_class(status)(
        message,
        status_code=status,
        error_type=body.type,
        request_id=body.request_id or request_id,
        details=body.details,
    )


def transport_error(error: httpx.TransportError, method: str, url: str) -> errors.DeepExecError:
    """The SDK exception for an httpx transport failure (raise it ``from error``)."""
    if isinstance(error, httpx.TimeoutException):
        return errors.MCPTimeoutError(
            f"{method} {url} timed out ({type(error).__name__}); the job itself may be fine — "
            "check its status, or pass a larger timeout= to the client",
            error_type="timeout",
        )
    origin = httpx.URL(url).copy_with(path="/", query=None)
    reason = str(error) or type(error).__name__
    return errors.MCPConnectionError(
        f"could not reach the DeepExec server at {str(origin).rstrip('/')} ({reason}); is it "
        "running? Start one on this machine with `deepexec serve`",
        error_type="connection_error",
    )


def validation_problem(
    model: type[BaseModel], response: httpx.Response, exc: ValidationError
) -> errors.MCPProtocolError:
    """A 2xx body that does not match the model the protocol promises."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
    )
    return _protocol_error(
        response,
        f"the answer to {response.request.method} {response.request.url.path} (HTTP "
        f"{response.status_code}) is not a valid {model.__name__}: {problems}",
        "invalid_response",
    )
