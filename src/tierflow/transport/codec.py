"""Stage requests and responses to and from sealed messages (the JSON header fields).

Request header: ``op``, ``model``, ``out`` (output names), ``meta``, ``rq`` (response quantization).
Response header: ``err`` ([code, message, reason] or null), ``meta``, ``q`` (how outputs travel).
:mod:`session` adds ``rid``, ``dir`` and the tensor list, and checks those.
"""

from __future__ import annotations

from typing import Any

from tierflow.errors import InvalidInputError
from tierflow.transport.envelope import Kind
from tierflow.transport.messages import (
    MetaValue,
    StageError,
    StageRequest,
    StageResponse,
    check_meta,
    check_quant,
)
from tierflow.transport.session import MessageRejected, OpenedMessage, Session
from tierflow.types.quant import QuantMode

MAX_TEXT = 4096  # op, model, error messages


def seal_request(session: Session, request: StageRequest) -> bytes:
    """Check ``request`` and seal it (its ``request_id`` must be set). Raises InvalidInputError."""
    header, quant = request_header(request)
    return session.seal(Kind.REQUEST, request.request_id, header, request.inputs, quant)


def request_header(request: StageRequest) -> tuple[dict[str, Any], QuantMode]:
    """The header fields of ``request`` (checked) and how its float inputs travel."""
    if not isinstance(request.op, str) or not request.op or len(request.op) > MAX_TEXT:
        raise InvalidInputError("a stage request needs an op name (a short string)")
    if not isinstance(request.model, str) or len(request.model) > MAX_TEXT:
        raise InvalidInputError("the model of a stage request must be a short string")
    if not all(isinstance(n, str) for n in request.outputs):
        raise InvalidInputError("output names must be strings")
    quant = check_quant(request.quant)
    header = {
        "op": request.op,
        "model": request.model,
        "out": list(request.outputs),
        "meta": check_meta(dict(request.meta)),
        "rq": check_quant(request.response_quant) if request.response_quant is not None else quant,
    }
    return header, quant


def open_request(session: Session, data: bytes) -> StageRequest:
    """Open a request message; raise MessageRejected (``bad_header`` when authentic but malformed)."""
    return request_from(session.open(data, Kind.REQUEST))


def request_from(opened: OpenedMessage) -> StageRequest:
    """The request an opened message holds; MessageRejected (``bad_header``) when its fields are not sane."""
    h = opened.header
    op, model, out, rq = h.get("op"), h.get("model"), h.get("out"), h.get("rq")
    if not isinstance(op, str) or not op or len(op) > MAX_TEXT:
        raise _bad(opened, "request has no valid op")
    if not isinstance(model, str) or len(model) > MAX_TEXT:
        raise _bad(opened, "request has no valid model name")
    if not isinstance(out, list) or not all(isinstance(n, str) for n in out):
        raise _bad(opened, "request output names are not a list of strings")
    try:
        response_quant = check_quant(rq)
    except InvalidInputError:
        raise _bad(opened, f"unknown response quantization {str(rq)[:40]!r}") from None
    return StageRequest(
        op=op,
        model=model,
        inputs=opened.tensors,
        outputs=out,
        meta=_meta(opened),
        quant=QuantMode.RAW,  # how the inputs travelled is per frame; the request keeps the decoded values
        response_quant=response_quant,
        request_id=opened.request_id,
    )


def seal_response(session: Session, response: StageResponse) -> bytes:
    """Seal a response (outputs in ``response.quant``). Raises InvalidInputError for bad outputs/meta."""
    header, quant = response_header(response)
    outputs = response.outputs if response.error is None else {}
    return session.seal(Kind.RESPONSE, response.request_id, header, outputs, quant)


def response_header(response: StageResponse) -> tuple[dict[str, Any], QuantMode]:
    """The header fields of ``response`` (checked) and how its float outputs travel."""
    err = response.error
    quant = check_quant(response.quant)
    header = {
        "err": None if err is None else [err.code[:MAX_TEXT], err.message[:MAX_TEXT], err.reason[:MAX_TEXT]],
        "meta": check_meta(dict(response.meta)),
        "q": quant,
    }
    return header, quant


def open_response(session: Session, data: bytes) -> StageResponse:
    return response_from(session.open(data, Kind.RESPONSE))


def response_from(opened: OpenedMessage) -> StageResponse:
    """The response an opened message holds; MessageRejected (``bad_header``) when its fields are not sane."""
    h = opened.header
    err, q = h.get("err"), h.get("q")
    error: StageError | None = None
    if err is not None:
        if not (isinstance(err, list) and len(err) == 3 and all(isinstance(x, str) for x in err)):
            raise _bad(opened, "response error is not [code, message, reason]")
        error = StageError(err[0], err[1], err[2])
    try:
        quant = check_quant(q)
    except InvalidInputError:
        raise _bad(opened, f"unknown response quantization {str(q)[:40]!r}") from None
    return StageResponse(opened.request_id, opened.tensors, error, _meta(opened), quant=quant)


def _meta(opened: OpenedMessage) -> dict[str, MetaValue]:
    meta = opened.header.get("meta")
    if not isinstance(meta, dict):
        raise _bad(opened, "meta is not an object")
    try:
        return check_meta(meta)
    except InvalidInputError as exc:
        raise _bad(opened, str(exc)) from None


def _bad(opened: OpenedMessage, why: str) -> MessageRejected:
    return MessageRejected("bad_header", why, opened.request_id)
