"""HTTP prediction service over a loaded model, with dynamic batching.

``create_app(model)`` builds a FastAPI app; ``mhc-serve MODEL`` runs it with uvicorn and the
connection limits of :class:`ServerOptions`:

* ``GET /health``: ``{"status": "ok", "tasks": [...], "input": {...}}`` (what the model reads).
* ``GET /metadata``: the tasks with their kinds and classes, the input, the batching settings and limits.
* ``GET /metrics``: Prometheus text (:class:`ServiceMetrics`): request latency, errors and
  requests in flight by route, forward-pass sizes and durations, inputs queued.
* ``POST /predict``: ``{"inputs": [...]}``, optionally with ``"threshold"`` (every binary and
  multilabel output decided at it instead of its task's tuned threshold) and ``"min_confidence"``
  (a multiclass or binary head answers ``null`` under it). An image model takes base64
  PNG/JPEG files (a ``data:`` URL prefix is allowed) or nested lists ``[H][W][3]`` /
  ``[3][H][W]`` of floats in [0, 1]; images of another size are resized to the model's, as
  :meth:`MultiHeadNet.predict` does. A token model takes texts (through its saved tokenizer) or
  lists of token ids (cut to ``max_length``, as texts are).
* ``POST /predict/image``: multipart upload of image files under ``files``.

Answers are ``{"predictions": [{task: {"label": ..., "probabilities": {class: p}}}]}``, one
entry per input in order; a multilabel label is a list, and a head that abstains answers
``null``. A malformed request is a 4xx answer ``{"error": "<one line>"}`` naming the input at
fault, bounded in length (:func:`bounded_message`); the service keeps serving. A body over
``max_body_mb`` is a 413 before it is read (:class:`BodyLimit`).

The event loop only moves bytes: bodies are parsed, inputs decoded and answers serialised in
worker threads, and requests never run the model themselves: their inputs go to a
:class:`DynamicBatcher`, whose worker gathers what concurrent requests submitted into forward
passes of up to ``max_batch_size`` inputs, run on a thread of their own. ``/health`` and
``/metrics`` are answered from memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, AsyncIterator, Callable, Optional, Sequence

import anyio
import h11
import numpy as np
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from torch import Tensor
from uvicorn.protocols.http.h11_impl import H11Protocol

from mhc.errors import DataError, MhcError
from mhc.model.net import MultiHeadNet
from mhc.predictor import OutputDecoder, TaskPrediction

MAX_IMAGE_PIXELS = 4096 * 4096  # larger images are refused before they are decoded
MAX_QUOTED_CHARS = 100  # a value quoted in an error answer is cut to this many characters
MAX_MESSAGE_CHARS = 400  # and the whole answer to this many
IMAGE_FORMS = "a base64-encoded PNG/JPEG file or a nested list [H][W][3] or [3][H][W] of floats in [0, 1]"

Forward = Callable[[Tensor], dict[str, Tensor]]


# --- inputs -------------------------------------------------------------------------------------


class PredictRequest(BaseModel):
    """The JSON body of ``POST /predict``; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Any]
    threshold: Optional[float] = Field(None, ge=0.0, le=1.0)  # None: each task's own thresholds
    min_confidence: Optional[float] = Field(None, ge=0.0, le=1.0)  # None: each task's own


def decode_inputs(net: MultiHeadNet, items: Sequence[Any], what: str = "input") -> Tensor:
    """Request inputs -> network rows: images float [N, 3, H, W] at the model's size, or token
    ids long [N, max_length]. A bad item is a :class:`DataError` naming ``what`` and its index."""
    rows = []
    for index, item in enumerate(items):
        try:
            rows.append(token_row(net, item) if net.takes_tokens else image_row(net, item))
        except DataError as err:
            raise DataError(f"{what} {index}: {err}") from None
    return torch.stack(rows)


def image_row(net: MultiHeadNet, item: Any) -> Tensor:
    """One image (file bytes, a base64 string or a nested list) -> float [3, H, W] in [0, 1],
    resized by the model's processor."""
    if isinstance(item, bytes):
        image: np.ndarray | Tensor = image_from_bytes(item)
    elif isinstance(item, str):
        image = image_from_bytes(base64_bytes(item))
    elif isinstance(item, list):
        image = image_from_list(item)
    else:
        raise DataError(f"expected {IMAGE_FORMS}, got {json_type(item)}")
    return net.processor.load(image)


def base64_bytes(text: str) -> bytes:
    """The bytes of a base64 string, with or without a ``data:image/...;base64,`` prefix."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise DataError(f"not a base64-encoded image ({err}); this model reads {IMAGE_FORMS}") from None
    if not data:
        raise DataError("the base64 string is empty")
    return data


def image_from_bytes(data: bytes) -> np.ndarray:
    """An image file's bytes -> uint8 [H, W, 3]; the size is checked before pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            check_image_size(*image.size)
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise DataError("not a readable image file (expected PNG or JPEG)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"the image file could not be decoded ({' '.join(str(err).split())})") from None


def image_from_list(values: list[Any]) -> Tensor:
    """A nested list [H][W][3] or [3][H][W] of floats in [0, 1] -> float [3, H, W]."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError):
        raise DataError("an image list must be a regular nested list of numbers (same length in every row)") from None
    if array.ndim != 3 or 3 not in (array.shape[0], array.shape[-1]):
        raise DataError(f"an image list must be [H][W][3] or [3][H][W], got shape {list(array.shape)}")
    tensor = torch.from_numpy(array)
    tensor = tensor.permute(2, 0, 1) if array.shape[-1] == 3 else tensor
    check_image_size(tensor.shape[2], tensor.shape[1])
    if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
        raise DataError(
            f"image values must be floats in [0, 1], got values in [{tensor.min().item():g}, {tensor.max().item():g}]"
        )
    return tensor


def check_image_size(width: int, height: int) -> None:
    if width < 1 or height < 1 or width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"image of {width}x{height} pixels; the service takes 1 to {MAX_IMAGE_PIXELS} pixels")


def token_row(net: MultiHeadNet, item: Any) -> Tensor:
    """One text or list of token ids -> ids long [max_length], right-padded, cut at ``max_length``."""
    if isinstance(item, str):
        if net.tokenizer is None:
            raise DataError("this model has no saved tokenizer for text; give a list of token ids")
        ids = net.tokenizer.ids(item)
    elif isinstance(item, list):
        ids = item
        wrong = next((pos for pos, i in enumerate(ids) if not isinstance(i, int) or isinstance(i, bool)), None)
        if wrong is not None:
            raise DataError(f"token ids must be integers; item {wrong} is {json_type(ids[wrong])}")
    else:
        raise DataError(f"this model reads {token_forms(net)}, got {json_type(item)}")
    processor = net.processor
    ids = ids[: processor.max_length]
    if all(i == processor.pad_id for i in ids):
        raise DataError("no tokens (the input is empty or all padding); give at least one token")
    vocab_size = token_vocab_size(net)
    outside = next(((pos, i) for pos, i in enumerate(ids) if not 0 <= i < vocab_size), None)
    if outside is not None:
        raise DataError(f"token id {outside[1]} at position {outside[0]} is outside the vocabulary [0, {vocab_size})")
    return processor.pad(ids)


def token_vocab_size(net: MultiHeadNet) -> int:
    return int(net.backbone.vocab_size)


def token_forms(net: MultiHeadNet) -> str:
    return "texts or lists of integer token ids" if net.tokenizer is not None else "lists of integer token ids"


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    names = {str: "a string", list: "a list", dict: "an object", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def input_description(net: MultiHeadNet) -> dict[str, Any]:
    """What the model reads, for ``/health`` and ``/metadata``."""
    if net.takes_tokens:
        return {"kind": "tokens", "max_length": net.processor.max_length, "vocab_size": token_vocab_size(net),
                "tokenizer": None if net.tokenizer is None else net.tokenizer.kind, "accepts": token_forms(net)}
    return {"kind": "image", "size": list(net.processor.size), "channels": 3, "accepts": IMAGE_FORMS,
            "other_sizes": "resized"}


# --- batching -----------------------------------------------------------------------------------


class BatcherClosed(RuntimeError):
    """The batcher takes no rows: not started, or stopping."""


Item = tuple[Tensor, asyncio.Future]
OnPass = Callable[[int, float], None]  # a forward pass's size and seconds
STOP: Any = object()  # queued by stop(): the worker ends once the rows before it have run


class DynamicBatcher:
    """Gathers rows submitted by concurrent requests into forward passes of up to
    ``max_batch_size`` rows.

    One worker task gathers the passes and runs them one at a time on a thread of their own, so
    requests keep arriving, and queueing, while the model runs: the next pass takes the rows
    queued meanwhile. Once a pass has its first row it waits up to ``timeout_ms`` for more, but
    only while ``more_coming()`` says other requests are on their way (being parsed and
    decoded): a lone request runs at once. A request's rows may span several passes; its answer
    is ready when all of them are. :meth:`stop` runs the rows already queued before the worker ends.

    Args:
        forward: network rows [B, ...] -> per-task outputs with a leading batch dimension.
        max_batch_size: most rows in one forward pass; 1 turns batching off.
        timeout_ms: longest wait for more rows once a pass has its first one.
        on_pass: called with each pass's size and seconds (the service's metrics).
        more_coming: whether rows are on their way; None: always wait up to ``timeout_ms``.
    """

    def __init__(self, forward: Forward, max_batch_size: int = 32, timeout_ms: float = 5.0,
                 on_pass: OnPass | None = None, more_coming: Callable[[], bool] | None = None) -> None:
        if max_batch_size < 1 or timeout_ms < 0:
            raise ValueError(f"max_batch_size must be >= 1 and timeout_ms >= 0, got {max_batch_size} and {timeout_ms}")
        self.forward, self.max_batch_size, self.timeout_s = forward, max_batch_size, timeout_ms / 1000
        self.on_pass = on_pass
        self.more_coming = more_coming or (lambda: True)
        self._queue: asyncio.Queue[Item] | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None  # the forward passes' thread
        self._closing = False

    @property
    def running(self) -> bool:
        """Whether the batcher takes rows: started and not stopping."""
        return self._worker is not None and not self._worker.done() and not self._closing

    async def start(self) -> None:
        self._queue, self._closing = asyncio.Queue(), False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mhc-forward")
        self._worker = asyncio.create_task(self._serve(), name="mhc-batcher")

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Takes no more rows, runs those already queued (for at most ``drain_timeout_s``), then
        ends the worker; rows it could not run are cancelled."""
        if self._worker is None or self._queue is None:
            return
        self._closing = True
        self._queue.put_nowait(STOP)
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), drain_timeout_s)
        except asyncio.TimeoutError:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not STOP:
                item[1].cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False)  # a pass cut short by the timeout ends on its own
        self._worker, self._executor, self._closing = None, None, False

    @property
    def queued(self) -> int:
        """Rows waiting for a forward pass."""
        return 0 if self._queue is None else self._queue.qsize()

    async def submit(self, rows: Tensor) -> list[dict[str, Tensor]]:
        """Per-row outputs for ``rows`` [N, ...], in order, once their passes have run."""
        if not self.running or self._queue is None:
            raise BatcherClosed("the batcher is not running" if not self._closing else "the batcher is stopping")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(len(rows))]
        for row, future in zip(rows, futures):
            self._queue.put_nowait((row, future))
        return list(await asyncio.gather(*futures))

    async def _serve(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = await self._next_batch()
            # A request that went away has cancelled its futures: its rows are not run.
            pending = [(row, future) for row, future in batch if not future.done()]
            if pending:
                await self._run(pending)

    async def _run(self, pending: list[Item]) -> None:
        """One forward pass over ``pending`` rows; their futures get its outputs or its error."""
        began = time.perf_counter()
        rows = [row for row, _ in pending]
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self.forward_rows, rows)
        except asyncio.CancelledError:  # stopped mid-pass: nobody will answer these rows
            for _, future in pending:
                future.cancel()
            raise
        except Exception as err:  # noqa: BLE001 - the waiting requests answer with it
            for _, future in pending:
                if not future.done():
                    future.set_exception(err)
            return
        if self.on_pass is not None:
            self.on_pass(len(pending), time.perf_counter() - began)
        for i, (_, future) in enumerate(pending):
            if not future.done():
                future.set_result({name: value[i] for name, value in outputs.items()})

    def forward_rows(self, rows: list[Tensor]) -> dict[str, Tensor]:
        """One pass over ``rows``, stacked: on the forward thread."""
        return self.forward(torch.stack(rows))

    async def _next_batch(self) -> tuple[list[Item], bool]:
        """The rows of the next pass, and whether :meth:`stop` came after them."""
        assert self._queue is not None
        first = await self._queue.get()
        if first is STOP:
            return [], True
        batch = [first]
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while len(batch) < self.max_batch_size:
            item = await self._next_item(deadline)
            if item is None:
                break
            if item is STOP:
                return batch, True
            batch.append(item)
        return batch, False

    async def _next_item(self, deadline: float) -> Item | None:
        """The next queued item, waiting until ``deadline`` (loop time) at most while more are
        coming; None if none came."""
        assert self._queue is not None
        if not self._queue.empty():
            return self._queue.get_nowait()
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0 or not self.more_coming():
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), remaining)
        except asyncio.TimeoutError:
            return None


def probabilities_forward(net: MultiHeadNet, decoder: OutputDecoder) -> Forward:
    """Network rows -> per-task probabilities on the CPU, by the model's decoder."""
    device = next(net.parameters()).device

    @torch.inference_mode()
    def forward(rows: Tensor) -> dict[str, Tensor]:
        return {name: p.cpu() for name, p in decoder.probabilities(net(rows.to(device))).items()}

    return forward


# --- answers ------------------------------------------------------------------------------------


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


# --- request bodies -----------------------------------------------------------------------------


MB = 1_000_000  # max_body_mb counts decimal megabytes


class BodyTooLarge(HTTPException):
    """A request body over the service's limit: a 413 whose message gives the size, if known, and the limit."""

    def __init__(self, limit_bytes: int, size: int | None = None) -> None:
        body = f"is {size / MB:.1f} MB" if size is not None else f"is over {limit_bytes / MB:g} MB"
        super().__init__(413, f"the request body {body}; the service takes at most {limit_bytes / MB:g} MB (max_body_mb)")


class BodyLimit:
    """ASGI middleware holding every request body to ``limit_bytes``: a request whose
    ``Content-Length`` is over it is answered 413 at once, before any of its body is read; a body
    without one (chunked) is counted as it streams in and refused when it passes the limit.

    FastAPI's own ``max_body_size`` answers a plain-text 413 outside the app's error handlers;
    this one answers the service's one-line JSON error.
    """

    def __init__(self, app: ASGIApp, limit_bytes: int) -> None:
        self.app, self.limit_bytes = app, limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = content_length(scope)
        if declared is not None and declared > self.limit_bytes:
            too_large = BodyTooLarge(self.limit_bytes, declared)
            return await error_response(too_large.status_code, too_large.detail)(scope, receive, send)
        await self.app(scope, self.counted(receive), send)

    def counted(self, receive: Receive) -> Receive:
        """``receive``, raising :class:`BodyTooLarge` once the body read so far passes the limit."""
        received = 0

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit_bytes:
                raise BodyTooLarge(self.limit_bytes)
            return message

        return receive_counted


def content_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, or None without one (a chunked body)."""
    value = Headers(scope=scope).get("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


def parse_predict_body(body: bytes) -> PredictRequest:
    """A ``POST /predict`` body -> the request; invalid JSON or fields raise :class:`RequestValidationError`."""
    try:
        return PredictRequest.model_validate_json(body)
    except ValidationError as err:
        raise RequestValidationError(err.errors(include_input=False)) from None


def check_json_body(request: Request) -> None:
    """``POST /predict`` reads JSON whatever the content type says, but a form upload goes elsewhere."""
    if request.headers.get("content-type", "").startswith("multipart/"):
        raise HTTPException(415, "POST /predict takes a JSON body {\"inputs\": [...]}; send image files to /predict/image")


# --- metrics ------------------------------------------------------------------------------------


class ServiceMetrics:
    """The service's Prometheus metrics, in a registry of its own (two apps in one process do not
    clash): request latency, errors and requests in flight by route; forward-pass sizes and
    durations; inputs waiting for a pass."""

    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("mhc_request_duration_seconds", "Seconds to answer a request, by route.", ["route"],
                                 registry=self.registry, buckets=LATENCY_BUCKETS)
        self.errors = Counter("mhc_request_errors", "Requests answered with a 4xx or 5xx status, by route and status.",
                              ["route", "status"], registry=self.registry)
        self.in_flight = Gauge("mhc_requests_in_flight", "Requests being answered, by route.", ["route"],
                               registry=self.registry)
        self.batch_size = Histogram("mhc_batch_size", "Inputs per forward pass (its count: the passes; its sum: the inputs).",
                                    registry=self.registry, buckets=batch_size_buckets(max_batch_size))
        self.forward_seconds = Histogram("mhc_forward_duration_seconds", "Seconds of one forward pass.",
                                         registry=self.registry, buckets=LATENCY_BUCKETS)
        self.queued = Gauge("mhc_batch_queue_inputs", "Inputs waiting for a forward pass.", registry=self.registry)

    def record_pass(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.forward_seconds.observe(seconds)

    def record_request(self, route: str, status: int, seconds: float) -> None:
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, str(status)).inc()

    def exposition(self, accept: str | None) -> Response:
        """The metrics in the Prometheus text format, or OpenMetrics if ``accept`` asks (``GET /metrics``)."""
        encode, content_type = choose_encoder(accept or "")
        return Response(encode(self.registry), media_type=content_type)


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def batch_size_buckets(max_batch_size: int) -> list[float]:
    """Every size up to 32, so the histogram counts each size exactly, then powers of two up to ``max_batch_size``."""
    sizes = set(range(1, min(max_batch_size, 32) + 1)) | {2.0**k for k in range(6, 31) if 2**k < max_batch_size}
    return sorted(sizes | {max_batch_size})


class RequestMetrics:
    """ASGI middleware timing each request and counting its errors and those in flight, by
    route: a path of the app's, or ``other`` (unknown paths make no new series)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: frozenset[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = 500  # unless a response starts: an exception that escapes every handler

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        began = time.perf_counter()
        with self.metrics.in_flight.labels(route).track_inprogress():
            try:
                await self.app(scope, receive, send_noting_status)
            finally:
                self.metrics.record_request(route, status, time.perf_counter() - began)


# --- the server -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerOptions:
    """How uvicorn holds connections for ``mhc-serve``; :meth:`uvicorn_options` gives them as
    ``uvicorn.run`` / ``uvicorn.Config`` arguments.

    Attributes:
        header_timeout_s: a connection whose request head is not complete this long after it
            opened, or after its previous answer, is closed (see :func:`header_timeout_protocol`).
        timeout_keep_alive_s: an idle keep-alive connection is closed after this long.
        max_header_kb: largest request head being received (h11's incomplete-event limit); more is a 400.
        limit_concurrency: most connections and requests at once; more are answered 503. None: no limit.
        timeout_graceful_shutdown_s: on SIGINT / SIGTERM, requests in flight get this long to
            finish before they are cancelled; then the batcher runs what is still queued.
    """

    header_timeout_s: float = 10.0
    timeout_keep_alive_s: float = 5.0
    max_header_kb: int = 16
    limit_concurrency: int | None = 1024
    timeout_graceful_shutdown_s: float = 30.0

    def uvicorn_options(self) -> dict[str, Any]:
        return {"http": header_timeout_protocol(self.header_timeout_s), "timeout_keep_alive": self.timeout_keep_alive_s,
                "h11_max_incomplete_event_size": self.max_header_kb * 1024, "limit_concurrency": self.limit_concurrency,
                "timeout_graceful_shutdown": self.timeout_graceful_shutdown_s}


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request head is not complete ``seconds``
    after the connection opened or after its previous answer. (uvicorn times out idle keep-alive
    connections only: a client sending its head a byte at a time held a connection for ever.)"""

    class HeaderTimeoutProtocol(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
            super().connection_made(transport)  # type: ignore[arg-type]
            self.start_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.start_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
            super().connection_lost(exc)

        def start_header_timer(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
            if not self.transport.is_closing():
                self.header_timer = self.loop.call_later(seconds, self.header_timed_out)

        def header_timed_out(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():  # no complete head yet
                self.transport.close()

    return HeaderTimeoutProtocol


# --- the app ------------------------------------------------------------------------------------


@dataclass
class Job:
    """One request's decoded rows and the decisions it asked for."""

    rows: Tensor
    threshold: float | None = None
    min_confidence: float | None = None


class PredictionService:
    """The model behind the routes. A request's body is parsed and its inputs decoded in a
    worker thread (at most ``decode_threads`` at once), its rows run through the
    :class:`DynamicBatcher`, and its answer is built and serialised in a worker thread (as many
    again, so answers never queue behind decoding): the event loop only moves bytes, so
    ``/health`` never waits on parsing or the model."""

    def __init__(self, model: MultiHeadNet, batcher: DynamicBatcher, decoder: OutputDecoder, max_inputs: int,
                 decode_threads: int) -> None:
        self.model, self.batcher, self.decoder = model, batcher, decoder
        self.max_inputs, self.decode_threads = max_inputs, decode_threads
        # Made by start(), in the serving event loop: the threads decoding requests, and answering them.
        self.decoding: anyio.CapacityLimiter | None = None
        self.answering: anyio.CapacityLimiter | None = None
        self.preparing = 0  # requests being parsed and decoded: their rows are on their way to the batcher

    async def start(self) -> None:
        self.decoding, self.answering = anyio.CapacityLimiter(self.decode_threads), anyio.CapacityLimiter(self.decode_threads)
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    async def predict(self, read: Callable[[], Job]) -> JSONResponse:
        """The answer to the request that ``read`` parses and decodes (in a worker thread)."""
        self.preparing += 1
        try:
            job = await anyio.to_thread.run_sync(read, limiter=self.decoding)
        finally:
            self.preparing -= 1
        outputs = await self.batcher.submit(job.rows)
        return await anyio.to_thread.run_sync(self.answer, outputs, job, limiter=self.answering)

    def json_job(self, body: bytes) -> Job:
        """A ``POST /predict`` body -> its rows and decisions."""
        request = parse_predict_body(body)
        return Job(self.decode(request.inputs, "input"), request.threshold, request.min_confidence)

    def decode(self, items: Sequence[Any], what: str) -> Tensor:
        """Network rows for a request's ``items``: 422 for none, 413 for more than ``max_inputs``."""
        if len(items) == 0:
            raise HTTPException(422, f"no {what}s given; send at least one")
        if len(items) > self.max_inputs:
            raise HTTPException(413, f"{len(items)} {what}s in one request; the limit is {self.max_inputs}")
        return decode_inputs(self.model, items, what)

    def answer(self, outputs: list[dict[str, Tensor]], job: Job) -> JSONResponse:
        """Per-row outputs -> the serialised ``{"predictions": [...]}`` answer."""
        probs = {name: torch.stack([out[name] for out in outputs]) for name in self.model.tasks}
        return JSONResponse({"predictions": prediction_entries(self.decoder.decode(probs, job.threshold, job.min_confidence))})


PREDICT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": PredictRequest.model_json_schema()}}}}


def create_app(model: MultiHeadNet, max_batch_size: int = 32, batch_timeout_ms: float = 5.0,
               max_inputs: int = 256, max_body_mb: float = 16.0, decode_threads: int | None = None) -> FastAPI:
    """A FastAPI app serving ``model`` (put in eval mode) with dynamic batching.

    Args:
        model: a loaded model, e.g. ``mhc.load(path)``.
        max_batch_size: most inputs in one forward pass; 1 turns batching off.
        batch_timeout_ms: longest wait for more inputs once a forward pass has its first one.
        max_inputs: most inputs in one request (more is a 413 answer).
        max_body_mb: largest request body in MB (more is a 413 answer, before the body is read).
        decode_threads: worker threads parsing bodies and decoding inputs at once (default: the CPU count, at most 8).

    The batching worker runs during the app's lifespan: use ``with TestClient(app)`` in tests.
    """
    model.eval()
    decoder = OutputDecoder(model.tasks.values())  # the decoding of every runtime
    metrics = ServiceMetrics(max_batch_size)
    batcher = DynamicBatcher(probabilities_forward(model, decoder), max_batch_size, batch_timeout_ms, metrics.record_pass,
                             more_coming=lambda: service.preparing > 0)
    metrics.queued.set_function(lambda: batcher.queued)
    service = PredictionService(model, batcher, decoder, max_inputs, decode_threads or min(8, os.cpu_count() or 1))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="mhc prediction service", lifespan=lifespan)
    app.state.model, app.state.batcher, app.state.service, app.state.metrics = model, batcher, service, metrics
    add_error_handlers(app)
    settings = {"batching": {"max_batch_size": max_batch_size, "batch_timeout_ms": batch_timeout_ms, "max_inputs": max_inputs},
                "limits": {"max_inputs": max_inputs, "max_body_mb": max_body_mb}}
    add_info_routes(app, service, settings)
    add_predict_routes(app, service)
    app.add_middleware(BodyLimit, limit_bytes=int(max_body_mb * MB))
    app.add_middleware(RequestMetrics, metrics=metrics, routes=frozenset(route.path for route in app.routes))  # outermost
    return app


def add_info_routes(app: FastAPI, service: PredictionService, settings: dict[str, Any]) -> None:
    """``/health``, ``/metadata`` and ``/metrics``: answered from memory, never waiting on the model."""
    model, batcher = service.model, service.batcher

    @app.get("/health")
    async def health() -> JSONResponse:
        status = "ok" if batcher.running else "stopped"
        return JSONResponse(status_code=200 if batcher.running else 503,
                            content={"status": status, "tasks": list(model.tasks), "input": input_description(model)})

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        return {
            "tasks": [{"name": t.name, "kind": t.kind, "classes": list(t.classes), "parent": t.parent}
                      for t in model.tasks.values()],
            "input": input_description(model),
            "backbone": model.backbone_config.get("name"),
            **settings,
        }

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return app.state.metrics.exposition(request.headers.get("accept"))


def add_predict_routes(app: FastAPI, service: PredictionService) -> None:
    """``POST /predict`` (JSON) and ``POST /predict/image`` (multipart files)."""
    model = service.model

    @app.post("/predict", openapi_extra=PREDICT_BODY)
    async def predict(request: Request) -> JSONResponse:
        check_json_body(request)
        body = await request.body()  # held to max_body_mb by BodyLimit
        return await service.predict(partial(service.json_job, body))

    @app.post("/predict/image")
    async def predict_image(files: Annotated[list[UploadFile], File()],
                            threshold: Annotated[Optional[float], Form(ge=0.0, le=1.0)] = None,
                            min_confidence: Annotated[Optional[float], Form(ge=0.0, le=1.0)] = None) -> JSONResponse:
        if model.takes_tokens:
            raise HTTPException(400, f"this model reads tokens, not images; POST {token_forms(model)} to /predict")
        contents = [await file.read() for file in files]
        return await service.predict(lambda: Job(service.decode(contents, "file"), threshold, min_confidence))
