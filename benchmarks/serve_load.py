"""Latency and throughput of ``mhc-serve`` under concurrent load, dynamic batching on and off,
and how fast ``/health`` answers meanwhile.

Two servers run side by side on 127.0.0.1 as subprocesses (``python -m mhc.cli.serve``), both
serving the same compact CNN with random weights (the default ``backbone=cnn`` and the seven
generated-scene heads; nothing downloads): one with ``--max-batch-size 32``, one with
``--max-batch-size 1``. For each number of clients, each client (an ``httpx.AsyncClient`` with
its own connection) sends one 64x64 scene PNG per ``POST /predict``, back to back, for
``--seconds``; the two servers take turns. Meanwhile a separate process asks ``GET /health``
every 20 ms on a new connection, as a load balancer would. The table gives requests/s, latency
percentiles, the ``/health`` p99 and the mean forward-pass size (from ``/metrics``). The clients
share the machine with the servers, so absolute figures are a floor.

    python benchmarks/serve_load.py [--concurrency 1 32 200] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
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
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

# torch, PIL and mhc are imported where the model and bodies are made, so that the /health
# probe (this script with --probe) starts in a fraction of a second.

BACKBONE = {"name": "cnn", "widths": [32, 64, 128, 128], "stem_stride": 2}
MODES = {"on (max 32)": 32, "off (max 1)": 1}


@dataclass
class LoadResult:
    """One run: requests answered, its length, their latencies, the /health latencies, the mean pass size."""

    requests: int
    seconds: float
    latencies_ms: list[float]
    health_ms: list[float]
    mean_batch: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: int, values: list[float] | None = None) -> float:
        return statistics.quantiles(self.latencies_ms if values is None else values, n=100, method="inclusive")[q - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A running ``mhc-serve`` subprocess: its URL, process and log."""

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
        process.wait(timeout=60)


def save_model(folder: Path) -> Path:
    """The compact CNN with random weights and the scene heads, as a checkpoint in ``folder``."""
    import torch

    from mhc.data.generated import scene_tasks
    from mhc.io import save_checkpoint
    from mhc.model import MultiHeadNet

    torch.manual_seed(0)
    return save_checkpoint(MultiHeadNet(BACKBONE, scene_tasks()), folder / "model.ckpt")


def request_bodies(count: int, form: str = "png") -> list[bytes]:
    """JSON bodies of ``POST /predict``, one generated scene each, encoded once up front: as a
    base64 PNG file, or (``form="list"``) as a nested list [64][64][3] of floats to 3 decimals."""
    import base64
    import io

    from PIL import Image

    from mhc.data.generated import render_scenes

    images, _ = render_scenes(count, seed=0)
    bodies = []
    for image in images:
        if form == "list":
            bodies.append(json.dumps({"inputs": [(image / 255).round(3).tolist()]}).encode())
            continue
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        bodies.append(json.dumps({"inputs": [base64.b64encode(buffer.getvalue()).decode("ascii")]}).encode())
    return bodies


def probe_health(url: str, seconds: float, every_s: float = 0.02) -> list[float]:
    """``GET /health`` on a new connection every ``every_s`` for ``seconds``: each answer's milliseconds."""
    address = urlsplit(url)
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        began = time.perf_counter()
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        connection.request("GET", "/health")
        status = connection.getresponse().status
        connection.close()
        if status != 200:
            raise RuntimeError(f"/health answered {status}")
        latencies.append((time.perf_counter() - began) * 1e3)
        time.sleep(every_s)
    return latencies


@contextlib.contextmanager
def health_probe(url: str, seconds: float) -> Iterator[list[float]]:
    """:func:`probe_health` in a process of its own (the load's event loop would delay it); the
    list it yields holds the latencies once the block ends."""
    process = subprocess.Popen([sys.executable, __file__, "--probe", url, "--seconds", str(seconds)],
                               stdout=subprocess.PIPE, text=True)
    latencies: list[float] = []
    try:
        yield latencies
    finally:
        output, _ = process.communicate(timeout=seconds + 120)
    latencies += json.loads(output)


def batch_totals(metrics: str) -> tuple[float, float]:
    """Forward passes and inputs so far, from the batch-size histogram of ``GET /metrics``."""
    samples = {sample.name: sample.value for family in text_string_to_metric_families(metrics)
               for sample in family.samples if sample.name in ("mhc_batch_size_count", "mhc_batch_size_sum")}
    return samples["mhc_batch_size_count"], samples["mhc_batch_size_sum"]


async def run_load(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> LoadResult:
    """``concurrency`` clients, each with its own connection, sending requests back to back for
    ``seconds`` while :func:`health_probe` asks ``/health``. (One shared ``AsyncClient`` pool of
    32 connections caps a 2-core machine near 300 requests/s by itself; separate clients do not.)"""
    headers = {"content-type": "application/json"}
    clients = [httpx.AsyncClient(base_url=url, timeout=120) for _ in range(concurrency)]
    try:
        await asyncio.gather(*[c.post("/predict", content=bodies[i % len(bodies)], headers=headers)
                               for i, c in enumerate(clients)])  # connections open, model warm
        before = batch_totals((await clients[0].get("/metrics")).text)
        latencies: list[float] = []

        async def one_client(client: httpx.AsyncClient, deadline: float) -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                response = await client.post("/predict", content=bodies[len(latencies) % len(bodies)], headers=headers)
                latencies.append((time.perf_counter() - began) * 1e3)
                response.raise_for_status()

        with health_probe(url, seconds) as health:
            start = time.perf_counter()
            await asyncio.gather(*[one_client(c, start + seconds) for c in clients])
            elapsed = time.perf_counter() - start
        after = batch_totals((await clients[0].get("/metrics")).text)
    finally:
        await asyncio.gather(*[c.aclose() for c in clients])
    passes, inputs = after[0] - before[0], after[1] - before[1]
    return LoadResult(len(latencies), elapsed, latencies, health, inputs / max(passes, 1))


def print_table(results: dict[tuple[int, str], LoadResult]) -> None:
    print("| clients | batching | req/s | p50 ms | p99 ms | /health p99 ms | mean batch |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for (concurrency, mode), r in results.items():
        print(f"| {concurrency} | {mode.split()[0]} | {r.rate:.1f} | {r.percentile(50):.1f} | {r.percentile(99):.1f} | "
              f"{r.percentile(99, r.health_ms):.1f} | {r.mean_batch:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 200])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each run, per server and concurrency")
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    parser.add_argument("--inputs", choices=["png", "list"], default="png",
                        help="each image as a base64 PNG (12 kB) or a nested list of floats (93 kB of JSON)")
    parser.add_argument("--probe", metavar="URL", help=argparse.SUPPRESS)  # the /health probe's process
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe_health(args.probe, args.seconds)))
        return
    bodies = request_bodies(64, args.inputs)
    results = {}
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        model = save_model(Path(folder))
        servers = {mode: stack.enter_context(server(model, size, args.batch_timeout_ms)) for mode, size in MODES.items()}
        for running in servers.values():
            running.wait_until_ready()
        print(f"mhc-serve, compact CNN (random weights), 7 heads, one 64x64 image per request ({args.inputs}), "
              f"batch timeout {args.batch_timeout_ms:g} ms, {args.seconds:g} s per run", flush=True)
        for concurrency in args.concurrency:
            for mode, running in servers.items():
                results[concurrency, mode] = asyncio.run(run_load(running.url, bodies, concurrency, args.seconds))
    print_table(results)


if __name__ == "__main__":
    main()
