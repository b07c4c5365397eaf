"""Throughput and latency of ``mhc-serve`` under concurrent load, dynamic batching on and off.

Two servers run side by side on 127.0.0.1 as subprocesses (``python -m mhc.cli.serve``), both
serving the same compact CNN with random weights (the default ``backbone=cnn`` and the seven
generated-scene heads): one with ``--max-batch-size 32``, one with ``--max-batch-size 1``.
For each concurrency level, ``httpx.AsyncClient`` clients each send one 64x64 scene PNG per
``POST /predict`` request, back to back, until ``--requests`` requests or ``--seconds`` have
passed; at each concurrency level the two servers run one after the other. The table
gives requests/s, latency percentiles and the mean forward-pass size (from ``/metrics``).
The clients share the machine with the servers, so absolute figures are a floor.

    python benchmarks/serve_load.py [--concurrency 8 32] [--requests 3000] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from mhc.data.generated import render_scenes, scene_tasks
from mhc.io import save_checkpoint
from mhc.model import MultiHeadNet

BACKBONE = {"name": "cnn", "widths": [32, 64, 128, 128], "stem_stride": 2}
MODES = {"on (max 32)": 32, "off (max 1)": 1}


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies_ms: list[float]
    mean_batch: float

    def percentile(self, q: int) -> float:
        return statistics.quantiles(self.latencies_ms, n=100)[q - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def wait_until_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the server at {self.url} did not start:\n{self.log.read_text()[-2000:]}")


@contextlib.contextmanager
def server(model: Path, max_batch_size: int, timeout_ms: float) -> Iterator[Server]:
    """A ``mhc-serve`` subprocess, its output in a log beside the model; stopped on exit."""
    port = free_port()
    command = [sys.executable, "-m", "mhc.cli.serve", str(model), "--port", str(port), "--log-level", "warning",
               "--max-batch-size", str(max_batch_size), "--batch-timeout-ms", str(timeout_ms)]
    log = model.with_name(f"server-{port}.log")
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield Server(f"http://127.0.0.1:{port}", process, log)
    finally:
        process.terminate()
        process.wait(timeout=30)


def request_bodies(count: int) -> list[bytes]:
    """JSON bodies of ``POST /predict``, one generated scene PNG each, encoded once up front."""
    images, _ = render_scenes(count, seed=0)
    bodies = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        bodies.append(json.dumps({"inputs": [base64.b64encode(buffer.getvalue()).decode("ascii")]}).encode())
    return bodies


async def run_load(url: str, bodies: list[bytes], concurrency: int, requests: int, seconds: float) -> LoadResult:
    """``concurrency`` clients, each with its own connection, sending requests back to back
    until ``requests`` or ``seconds``. (One shared ``AsyncClient`` pool of 32 connections
    caps a 2-core machine near 300 requests/s by itself; separate clients do not.)"""
    headers = {"content-type": "application/json"}
    clients = [httpx.AsyncClient(base_url=url, timeout=60) for _ in range(concurrency)]
    try:
        await asyncio.gather(*[c.post("/predict", content=bodies[i % len(bodies)], headers=headers)
                               for i, c in enumerate(clients)])
        before = batch_totals((await clients[0].get("/metrics")).text)
        latencies: list[float] = []
        sent = 0
        start = time.perf_counter()
        deadline = start + seconds

        async def one_client(client: httpx.AsyncClient) -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                body = bodies[sent % len(bodies)]
                sent += 1
                began = time.perf_counter()
                response = await client.post("/predict", content=body, headers=headers)
                latencies.append((time.perf_counter() - began) * 1e3)
                response.raise_for_status()

        await asyncio.gather(*[one_client(c) for c in clients])
        elapsed = time.perf_counter() - start
        after = batch_totals((await clients[0].get("/metrics")).text)
    finally:
        await asyncio.gather(*[c.aclose() for c in clients])
    passes, inputs = after[0] - before[0], after[1] - before[1]
    return LoadResult(len(latencies), elapsed, latencies, inputs / max(passes, 1))


def batch_totals(metrics: str) -> tuple[float, float]:
    """Forward passes and inputs so far, from the batch-size histogram of ``GET /metrics``."""
    samples = {sample.name: sample.value for family in text_string_to_metric_families(metrics)
               for sample in family.samples if sample.name in ("mhc_batch_size_count", "mhc_batch_size_sum")}
    return samples["mhc_batch_size_count"], samples["mhc_batch_size_sum"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--requests", type=int, default=3000, help="most requests per run")
    parser.add_argument("--seconds", type=float, default=8.0, help="longest run, per server and concurrency")
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    bodies = request_bodies(64)
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        model = save_checkpoint(MultiHeadNet(BACKBONE, scene_tasks()), Path(folder) / "model.ckpt")
        servers = {mode: stack.enter_context(server(model, size, args.batch_timeout_ms)) for mode, size in MODES.items()}
        for running in servers.values():
            running.wait_until_ready()
        print(f"mhc-serve, compact CNN (random weights), 7 heads, one 64x64 PNG per request, "
              f"batch timeout {args.batch_timeout_ms:g} ms, runs of <= {args.requests} requests or {args.seconds:g} s")
        print(f"{'clients':>7}  {'batching':<12}{'req/s':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean batch':>12}")
        for concurrency in args.concurrency:
            results = {mode: asyncio.run(run_load(running.url, bodies, concurrency, args.requests, args.seconds))
                       for mode, running in servers.items()}
            for mode, r in results.items():
                print(f"{concurrency:>7}  {mode:<12}{r.requests / r.seconds:>8.1f}{r.percentile(50):>9.1f}"
                      f"{r.percentile(90):>9.1f}{r.percentile(99):>9.1f}{r.mean_batch:>12.1f}")
            on, off = results.values()
            print(f"{concurrency:>7}  {'on / off':<12}{(on.requests / on.seconds) / (off.requests / off.seconds):>8.2f}"
                  f"{on.percentile(50) / off.percentile(50):>9.2f}{on.percentile(90) / off.percentile(90):>9.2f}"
                  f"{on.percentile(99) / off.percentile(99):>9.2f}")


if __name__ == "__main__":
    main()
