"""The server's errors: each failure as an HTTP status and a stable code in a JSON body.

Every error response is ``{"error": {"code": ..., "message": ...}}`` (a
conflict adds ``expected_version`` and ``actual_version``). The code is
stable (clients branch on it); the message is the exception's text, the same
as the command line prints after ``castore:``. A response never holds a
traceback, a value or the token (docs/SERVER.md, "Errors").
"""

from __future__ import annotations

import errno
from typing import Any, Final

import msgspec
from starlette.responses import Response

from castore.errors import (
    ConflictError,
    CorruptionError,
    FormatVersionError,
    InvalidRefError,
    InvalidValueError,
    LockTimeoutError,
    NotFoundError,
    PatchTestError,
    StoreUnavailableError,
    ValueTooLargeError,
)
from castore.wire import exception_args

__all__ = ["CODES", "STORE_NAME", "ApiError", "api_error", "error_body", "error_response"]

STORE_NAME: Final = "<store>"  # what an error response calls the server's store directory

# Every code a response may carry -> its HTTP status (docs/SERVER.md and the OpenAPI document).
CODES: Final[dict[str, int]] = {
    "bad_request": 400,  # malformed JSON body, unknown field, wrong type, missing field
    "invalid_ref": 400,  # bad scope, namespace, key, prefix, limit or version
    "invalid_value": 400,  # not one JSON value; a patch that does not apply; incr of a non-number
    "unauthorized": 401,  # no token, or a wrong one
    "not_found": 404,  # ``required`` and the key is absent; a version that does not exist
    "not_found_route": 404,  # no such operation or path
    "method_not_allowed": 405,  # e.g. GET on /v1/get
    "conflict": 409,  # expected_version or create_only did not hold
    "patch_test_failed": 409,  # a JSON Patch ``test`` operation failed
    "misdirected": 421,  # a clustered server: another member list, or another owner
    "value_too_large": 413,  # the value is over 1 MiB (raw or normalized)
    "body_too_large": 413,  # the request body is over the limit
    "damaged": 500,  # the store holds damage that hides the answer: castore check --repair
    "io_error": 500,  # the store's disk failed (disk full, permissions)
    "internal": 500,  # a bug: see the server's log
    "store_unavailable": 503,  # the store cannot be reached, a key stayed locked, not a store
    "timeout": 503,  # the request took longer than the server's request timeout
}


class ApiError(Exception):
    """A failure to send as an error response: a code of :data:`CODES`, a message, extra fields.

    Args:
        code: the stable code (its status is ``CODES[code]``).
        message: what was wrong, for people.
        extra: more members of the error object (a conflict's versions).
    """

    def __init__(self, code: str, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.extra = extra or {}

    @property
    def status(self) -> int:
        """The HTTP status of the code."""
        return CODES[self.code]

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def _conflict(exc: ConflictError) -> ApiError:
    code = "patch_test_failed" if isinstance(exc, PatchTestError) else "conflict"
    versions = {"expected_version": exc.expected, "actual_version": exc.actual}
    return ApiError(code, str(exc), versions)


# Checked in order: a subclass before its base.
_MAPPING: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (ValueTooLargeError, "value_too_large"),
    (InvalidValueError, "invalid_value"),
    (InvalidRefError, "invalid_ref"),
    (NotFoundError, "not_found"),
    (FormatVersionError, "store_unavailable"),  # not (or no longer) a castore store
    (CorruptionError, "damaged"),
    (StoreUnavailableError, "store_unavailable"),
    (LockTimeoutError, "store_unavailable"),
)


def api_error(exc: BaseException, *, exception: bool = False, root: str = "") -> ApiError:
    """The error response of an exception a store call raised.

    castore's own errors keep their message; an ``OSError`` says only its
    ``strerror`` (no path) and its errno's name (``"errno": "ENOSPC"``);
    anything else is ``internal`` with a fixed message (the server logs the
    exception, never the response). With
    ``exception``, one of castore's exceptions is also named with its
    arguments (``exception``, ``args``), so a client raises the same one.
    With ``root`` (the store's directory), the message and the arguments name
    it ``<store>``: a client learns no path of the server's.
    """
    err = _api_error(exc)
    name, args = exception_args(exc) if exception else ("", [])
    if root:
        err = ApiError(err.code, err.message.replace(root, STORE_NAME), err.extra)
        args = [a.replace(root, STORE_NAME) if isinstance(a, str) else a for a in args]
    if name:
        return ApiError(err.code, err.message, {**err.extra, "exception": name, "args": args})
    return err


def _api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ConflictError):
        return _conflict(exc)
    for kind, code in _MAPPING:
        if isinstance(exc, kind):
            return ApiError(code, str(exc))
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno, "") if isinstance(exc.errno, int) else ""
        message = f"I/O error: {exc.strerror or type(exc).__name__}"
        return ApiError("io_error", message, {"errno": name} if name else {})
    return ApiError("internal", "internal server error (see the server's log)")


class _Body(msgspec.Struct, frozen=True):
    error: dict[str, Any]


def error_body(err: ApiError) -> bytes:
    """The JSON body of an error response: ``{"error": {"code", "message", ...}}``."""
    return msgspec.json.encode(_Body({"code": err.code, "message": err.message, **err.extra}))


def error_response(err: ApiError, headers: dict[str, str] | None = None) -> Response:
    """The error response of ``err``: its status and JSON body."""
    return Response(error_body(err), err.status, headers, media_type="application/json")
