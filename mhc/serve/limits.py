"""What a connection may take: the request-body limit (checked before a body is read) and the
server's connection settings (keep-alive, header size and read timeout, concurrency, shutdown)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import h11
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from mhc.serve.answers import error_response

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


