"""Dynamic batching: the rows concurrent requests submit, gathered into forward passes of up to
``max_batch_size`` rows, run on a thread of their own."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import torch
from torch import Tensor

from mhc.model.net import MultiHeadNet
from mhc.predictor import OutputDecoder

Forward = Callable[[Tensor], dict[str, Tensor]]


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


