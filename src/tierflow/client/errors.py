"""The API's error answers back into tierflow's one error tree (docs/API.md, "Errors").

An HTTP status picks the class; an ``event: error`` in a stream carries no status, so its
``error`` name does. The message is always the server's ``detail``: what it says is what the
user sees, whether from the SDK or from ``tierflow generate``.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tierflow.errors import (
    AuthenticationError,
    ContextExpiredError,
    ContextForbiddenError,
    ContextNotFoundError,
    InvalidInputError,
    RecoverableError,
    TierflowError,
    TierUnavailableError,
    UserError,
)

STATUS_ERRORS: dict[int, type[TierflowError]] = {
    401: AuthenticationError,
    403: ContextForbiddenError,
    404: ContextNotFoundError,
    410: ContextExpiredError,
    422: InvalidInputError,
    503: TierUnavailableError,
}

# the ``error`` names of docs/API.md and their statuses, for errors that arrive inside a stream
NAME_STATUS: dict[str, int] = {
    "Unauthorized": 401,
    "Forbidden": 403,
    "ContextNotFound": 404,
    "ContextExpired": 410,
    "InvalidRequest": 422,
    "UnknownModel": 422,
    "Unsupported": 422,
    "SLAUnmet": 422,
    "TierUnavailable": 503,
}


def error_for_status(status: int, body: Any, fallback: str) -> TierflowError:
    """The error for an answer with ``status``; ``fallback`` is the message when there is no detail."""
    message = _detail(body) or fallback
    kind = STATUS_ERRORS.get(status)
    if kind is TierUnavailableError:
        tier = body.get("tier") if isinstance(body, dict) else None
        return TierUnavailableError(message, tier=tier if isinstance(tier, str) else None)
    if kind is not None:
        return kind(message)
    if 400 <= status < 500:
        return UserError(message)
    return RecoverableError(message)  # 5xx, and any status the API does not answer with


def error_for_event(data: str) -> TierflowError:
    """The error an ``event: error`` in a stream stands for (its data is the error body)."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return RecoverableError(f"the stream failed: {data.strip()[:200] or 'no detail'}")
    status = body.get("status")
    if not isinstance(status, int):
        status = NAME_STATUS.get(str(body.get("error")), 500)
    return error_for_status(status, body, f"the stream failed: {body.get('error') or 'unknown error'}")


def error_for_response(response: httpx.Response) -> TierflowError:
    """The error for a read, failed ``response`` (a body that is not JSON still gives one line)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    text = " ".join(response.text.split())[:200] if body is None else ""
    fallback = f"HTTP {response.status_code} from {response.request.url}" + (f": {text}" if text else "")
    return error_for_status(response.status_code, body, fallback)


def _detail(body: Any) -> str:
    """The one-line ``detail`` of an error body (FastAPI's own 422 gives a list: joined)."""
    if not isinstance(body, dict):
        return ""
    detail = body.get("detail")
    if isinstance(detail, str):
        return " ".join(detail.split())
    if isinstance(detail, list):
        return "; ".join(_validation_item(item) for item in detail)
    return "" if detail is None else json.dumps(detail)


def _validation_item(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(str(part) for part in item.get("loc", ()))
    message = str(item.get("msg", item))
    return f"{where}: {message}" if where else message
