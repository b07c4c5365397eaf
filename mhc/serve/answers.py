"""Answers: predictions as JSON entries, and errors as one bounded line ``{"error": ...}``."""

from __future__ import annotations

from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from mhc.errors import MhcError
from mhc.predictor import TaskPrediction
from mhc.serve.batching import BatcherClosed

MAX_QUOTED_CHARS = 100  # a value quoted in an error answer is cut to this many characters
MAX_MESSAGE_CHARS = 400  # and the whole answer to this many


def prediction_entries(predictions: dict[str, TaskPrediction]) -> list[dict[str, Any]]:
    """Decoded predictions -> one ``{task: {"label", "probabilities"}}`` per input."""
    count = len(next(iter(predictions.values())).labels)
    return [
        {name: {"label": pred.labels[i], "probabilities": dict(zip(pred.classes, pred.probs[i].tolist()))}
         for name, pred in predictions.items()}
        for i in range(count)
    ]


def error_response(status: int, message: str) -> JSONResponse:
    """``{"error": "<one line>"}``, its length bounded by :func:`bounded_message`."""
    return JSONResponse(status_code=status, content={"error": bounded_message(message)})


def bounded_message(message: str) -> str:
    """``message`` on one line, each quoted value (a token, a field name) cut to
    ``MAX_QUOTED_CHARS`` characters and the whole to ``MAX_MESSAGE_CHARS``, each cut marked by
    an ellipsis: an answer never echoes a large input back."""
    line = " ".join(cut_quoted(message, MAX_QUOTED_CHARS).split())
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 1] + "…"


def cut_quoted(text: str, limit: int) -> str:
    """``text`` with each value between quotes (``'`` or ``"``) longer than ``limit`` cut to
    ``limit`` characters and an ellipsis. Quotes are found with ``str.find``, so a value of
    megabytes costs milliseconds."""
    pieces, pos = [], 0
    while (start := next_quote(text, pos)) != -1:
        end = text.find(text[start], start + 1)
        stop = len(text) if end == -1 else end
        if stop - start - 1 > limit:
            pieces += [text[pos:start + 1 + limit], "…"]
        else:
            pieces.append(text[pos:stop])
        pieces.append(text[stop:stop + 1])  # the closing quote, if any
        pos = stop + 1
    pieces.append(text[pos:])
    return "".join(pieces)


def next_quote(text: str, pos: int) -> int:
    """The index of the first ``'`` or ``"`` at or after ``pos``, or -1."""
    found = [index for index in (text.find("'", pos), text.find('"', pos)) if index != -1]
    return min(found, default=-1)


def validation_message(errors: Sequence[dict[str, Any]], shown: int = 3) -> str:
    """One line for pydantic's errors on a request: the first ``shown`` of them, joined."""
    messages = []
    for error in errors[:shown]:
        field = ".".join(str(part) for part in error["loc"] if part != "body")
        if error["type"] == "extra_forbidden":
            messages.append(f"unknown field '{field}' in the request body")
        elif error["type"] == "json_invalid":
            messages.append(f"the request body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])})")
        elif error["type"] == "model_type":
            messages.append('the request body must be a JSON object {"inputs": [...]}')
        elif error["type"] == "missing":
            messages.append(f"the request has no '{field}' field")
        else:
            messages.append(f"{field or 'body'}: {error['msg']}")
    more = f" (and {len(errors) - shown} more errors)" if len(errors) > shown else ""
    return "; ".join(messages) + more


def add_error_handlers(app: FastAPI) -> None:
    """Every error answer is ``{"error": "<one line>"}``: bad inputs 422, HTTP errors as raised."""

    @app.exception_handler(MhcError)
    async def bad_input(request: Request, err: MhcError) -> JSONResponse:
        return error_response(422, str(err))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_message(err.errors()))

    @app.exception_handler(BatcherClosed)
    async def stopping(request: Request, err: BatcherClosed) -> JSONResponse:
        return error_response(503, "the service is shutting down")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return error_response(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(err).__name__}: {err}")


