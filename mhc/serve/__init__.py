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

from mhc.serve.app import PredictionService, create_app
from mhc.serve.batching import BatcherClosed, DynamicBatcher
from mhc.serve.limits import ServerOptions

__all__ = ["BatcherClosed", "DynamicBatcher", "PredictionService", "ServerOptions", "create_app"]
