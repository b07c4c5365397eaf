"""The FastAPI app: routes over a :class:`PredictionService` that decodes in worker threads and
predicts through the :class:`~mhc.serve.batching.DynamicBatcher`."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, AsyncIterator, Callable, Optional, Sequence

import anyio
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from torch import Tensor

from mhc.model.net import MultiHeadNet
from mhc.predictor import OutputDecoder
from mhc.serve.answers import add_error_handlers, prediction_entries
from mhc.serve.batching import DynamicBatcher, probabilities_forward
from mhc.serve.inputs import (
    PredictRequest,
    check_json_body,
    decode_inputs,
    input_description,
    parse_predict_body,
    token_forms,
)
from mhc.serve.limits import MB, BodyLimit
from mhc.serve.metrics import RequestMetrics, ServiceMetrics


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
