"""The prediction service: answers equal ``net.predict``, malformed requests are one-line 4xx
errors that leave the service serving, and concurrent requests share forward passes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import http.client
import io
import json
import socket
import threading
import time
from typing import Iterable, Iterator

import numpy as np
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from uvicorn.protocols.http.h11_impl import H11Protocol

import mhc
from mhc.cli import serve as serve_cli
from mhc.data import SequencesDataModule
from mhc.data.sequences import VOCAB, sequence_tasks
from mhc.io import save_checkpoint
from mhc.model import MultiHeadNet
from mhc.serve import BatcherClosed, DynamicBatcher, ServerOptions, create_app
from mhc.serve import app as serve_app


@pytest.fixture
def image_model(tiny_net, tmp_path):
    return mhc.load(save_checkpoint(tiny_net, tmp_path / "tiny.ckpt"))


@pytest.fixture
def client(image_model):
    with TestClient(create_app(image_model, max_inputs=4)) as client:
        yield client


@pytest.fixture
def sequence_model(tmp_path):
    """A small untrained sequence transformer with the generated sequences' word tokenizer
    (serving needs no trained weights; the trained session fixture takes minutes alone)."""
    torch.manual_seed(0)
    backbone = {"name": "seq_tiny", "vocab_size": len(VOCAB), "max_length": 32, "dim": 32, "depth": 1, "num_heads": 2}
    data = SequencesDataModule()
    net = MultiHeadNet(backbone, sequence_tasks(), data.processor())
    return mhc.load(save_checkpoint(net, tmp_path / "sequences.ckpt"))


def random_images(count: int, size: tuple[int, int] = (64, 64), seed: int = 0) -> list[np.ndarray]:
    generator = np.random.default_rng(seed)
    return [generator.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def png_base64(image: np.ndarray) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


def assert_matches(predictions: list[dict], expected: dict, rows: range | None = None) -> None:
    """Service answers equal ``net.predict`` output: labels, and probabilities to 1e-5."""
    rows = rows or range(len(predictions))
    assert len(predictions) == len(rows)
    for answer, row in zip(predictions, rows):
        assert set(answer) == set(expected)
        for task, pred in expected.items():
            assert answer[task]["label"] == pred.labels[row]
            assert list(answer[task]["probabilities"]) == pred.classes
            np.testing.assert_allclose(list(answer[task]["probabilities"].values()), pred.probs[row].numpy(), atol=1e-5)


def assert_one_line_error(response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message and all(fragment in message for fragment in fragments), message


Address = tuple[str, int]


@dataclasses.dataclass
class LiveServer:
    """A uvicorn server running in a thread, and where it listens."""

    address: Address
    server: uvicorn.Server


@contextlib.contextmanager
def live_server(app: FastAPI, **options) -> Iterator[LiveServer]:
    """``app`` served by uvicorn (with ``options``) in a thread on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the test server did not start"
    try:
        yield LiveServer(sock.getsockname(), server)
    finally:
        server.should_exit = True
        thread.join(30)


def exchange(address: Address, head: bytes, body: Iterable[bytes] = (), timeout: float = 5.0) -> tuple[int, dict]:
    """Sends a raw request (``head`` then the ``body`` parts) and reads the answer: status and JSON."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(head)
        for part in body:
            sock.sendall(part)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


def health_latency(address: Address) -> float:
    """Seconds for one ``GET /health`` on a new connection."""
    began = time.perf_counter()
    connection = http.client.HTTPConnection(*address, timeout=10)
    connection.request("GET", "/health")
    assert connection.getresponse().status == 200
    connection.close()
    return time.perf_counter() - began


def post_head(length: int | None, content_type: str = "application/json") -> bytes:
    """The head of a ``POST /predict``: with a ``Content-Length``, or chunked without one."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n".encode()


def test_health_and_metadata_describe_tasks_and_input(client, image_model):
    health = client.get("/health").json()
    assert health == {"status": "ok", "tasks": ["coarse", "fine", "flag", "tags"], "input": health["input"]}
    assert health["input"]["kind"] == "image" and health["input"]["size"] == [64, 64]
    tasks = {t["name"]: t for t in client.get("/metadata").json()["tasks"]}
    assert tasks["tags"]["kind"] == "multilabel" and tasks["tags"]["classes"] == ["x", "y", "z"]
    assert tasks["fine"]["parent"] == "coarse" and tasks["flag"]["classes"] == ["no", "yes"]


def test_base64_png_predictions_equal_net_predict(client, image_model):
    images = random_images(2) + random_images(1, size=(40, 50), seed=1)  # the last one is resized
    response = client.post("/predict", json={"inputs": [png_base64(im) for im in images]})
    assert response.status_code == 200, response.text
    assert_matches(response.json()["predictions"], image_model.predict(images))


def test_data_url_prefix_is_accepted(client, image_model):
    image = random_images(1)[0]
    response = client.post("/predict", json={"inputs": [f"data:image/png;base64,{png_base64(image)}"]})
    assert_matches(response.json()["predictions"], image_model.predict([image]))


def test_nested_lists_in_either_layout_equal_net_predict(client, image_model):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    inputs = [images[0].permute(1, 2, 0).tolist(), images[1].tolist()]  # [H][W][3] and [3][H][W]
    response = client.post("/predict", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    assert_matches(response.json()["predictions"], image_model.predict(images))


def test_multipart_upload_equals_net_predict(client, image_model):
    images = random_images(2, seed=3)
    files = [("files", (f"{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(images)]
    response = client.post("/predict/image", files=files)
    assert response.status_code == 200, response.text
    assert_matches(response.json()["predictions"], image_model.predict(images))


def test_threshold_decides_multilabel_labels(client):
    image = png_base64(random_images(1)[0])
    everything = client.post("/predict", json={"inputs": [image], "threshold": 0.0}).json()["predictions"][0]
    nothing = client.post("/predict", json={"inputs": [image], "threshold": 1.0}).json()["predictions"][0]
    assert everything["tags"]["label"] == ["x", "y", "z"]
    assert nothing["tags"]["label"] == [c for c, p in nothing["tags"]["probabilities"].items() if p >= 1.0]


def test_the_tasks_own_thresholds_and_confidences_decide_unless_a_request_overrides_them(tiny_net, tmp_path):
    tasks = {name: dataclasses.replace(t, thresholds=[0.0, 1.0, 0.0][:t.num_outputs]) if t.kind == "multilabel"
             else dataclasses.replace(t, min_confidence=1.0) if t.kind == "multiclass" and t.parent is None else t
             for name, t in tiny_net.tasks.items()}
    tiny_net.tasks.update(tasks)
    model = mhc.load(save_checkpoint(tiny_net, tmp_path / "tuned.ckpt"))
    image = png_base64(random_images(1)[0])
    with TestClient(create_app(model)) as client:
        tuned = client.post("/predict", json={"inputs": [image]}).json()["predictions"][0]
        plain = client.post("/predict", json={"inputs": [image], "threshold": 0.5, "min_confidence": 0.0}).json()
    multilabel = next(t for t in tasks.values() if t.kind == "multilabel")
    assert tuned[multilabel.name]["label"] == [c for c, cut in zip(multilabel.classes, [0.0, 1.0, 0.0]) if cut == 0.0]
    abstaining = [t.name for t in tasks.values() if t.min_confidence == 1.0]
    assert abstaining and all(tuned[name]["label"] is None for name in abstaining)
    expected = model.predict([random_images(1)[0]], threshold=0.5, min_confidence=0.0)
    assert_matches(plain["predictions"], expected)


GOOD = png_base64(random_images(1)[0])
MALFORMED = {
    "bad base64": ({"inputs": [GOOD, "not base64 !!"]}, 422, ["input 1", "base64"]),
    "not an image file": ({"inputs": [base64.b64encode(b"hello world!").decode()]}, 422, ["input 0", "image"]),
    "truncated png": ({"inputs": [base64.b64encode(base64.b64decode(GOOD)[:60]).decode()]}, 422, ["input 0"]),
    "text for an image model": ({"inputs": [GOOD, "a red circle"]}, 422, ["input 1"]),
    "wrong shape": ({"inputs": [[[0.5, 0.5, 0.5]] * 4]}, 422, ["input 0", "[4, 3]"]),
    "four channels": ({"inputs": [[[[0.5] * 4] * 8] * 8]}, 422, ["input 0", "[8, 8, 4]"]),
    "ragged list": ({"inputs": [[[[0.5] * 3] * 8, [[0.5] * 3] * 7]]}, 422, ["input 0", "regular"]),
    "values out of range": ({"inputs": [[[[255.0] * 3] * 8] * 8]}, 422, ["input 0", "[0, 1]"]),
    "a number": ({"inputs": [GOOD, GOOD, 7]}, 422, ["input 2", "an integer"]),
    "unknown field": ({"inputs": [GOOD], "top_k": 3}, 422, ["unknown field 'top_k'"]),
    "no inputs field": ({"images": [GOOD]}, 422, ["images"]),
    "empty inputs": ({"inputs": []}, 422, ["at least one"]),
    "too many inputs": ({"inputs": [GOOD] * 5}, 413, ["5 inputs", "limit is 4"]),
    "threshold above 1": ({"inputs": [GOOD], "threshold": 2}, 422, ["threshold"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_is_a_one_line_4xx_and_the_service_keeps_serving(client, case):
    body, status, fragments = MALFORMED[case]
    assert_one_line_error(client.post("/predict", json=body), status, *fragments)
    assert client.post("/predict", json={"inputs": [GOOD]}).status_code == 200


def test_malformed_bodies_and_uploads_are_one_line_errors(client):
    assert_one_line_error(client.post("/predict", content=b"{not json", headers={"content-type": "application/json"}),
                          422, "not valid JSON")
    files = [("files", ("a.png", base64.b64decode(GOOD), "image/png")), ("files", ("b.txt", b"text", "text/plain"))]
    assert_one_line_error(client.post("/predict/image", files=files), 422, "file 1")
    assert_one_line_error(client.post("/predict/image"), 422, "files")
    assert_one_line_error(client.get("/nowhere"), 404)
    assert client.get("/health").json()["status"] == "ok"


LONG = "z" * 200_000  # one 200 kB word or field name
MAX_ANSWER_BYTES = 600  # MAX_MESSAGE_CHARS and the JSON around it


def test_an_error_answer_never_echoes_a_large_input(client, sequence_model):
    """An unknown 200 kB token (it was quoted twice: a 400 kB answer) and a 200 kB unknown field
    name are cut to 100 characters with an ellipsis, the whole answer under 600 bytes."""
    answer = client.post("/predict", json={"inputs": [GOOD], LONG: 1})
    assert_one_line_error(answer, 422, "unknown field 'zzzz", "…'")
    assert len(answer.content) < MAX_ANSWER_BYTES and "z" * 101 not in answer.text
    with TestClient(create_app(sequence_model)) as tokens:
        answer = tokens.post("/predict", json={"inputs": ["a0 " + LONG]})
    assert_one_line_error(answer, 422, "input 0", "unknown token 'zzzz", "…")
    assert len(answer.content) < MAX_ANSWER_BYTES and "z" * 101 not in answer.text


def test_a_body_over_the_limit_is_refused_from_its_content_length_before_any_of_it_is_sent(image_model):
    with live_server(create_app(image_model, max_body_mb=1)) as live:
        status, answer = exchange(live.address, post_head(50_000_000))  # the head alone: the body never comes
    assert (status, answer) == (413, {"error": "the request body is 50.0 MB; the service takes at most 1 MB (max_body_mb)"})


def test_a_chunked_body_is_counted_as_it_streams_and_refused_past_the_limit(image_model):
    chunk = b"%x\r\n%s\r\n" % (64_000, b" " * 64_000)
    with live_server(create_app(image_model, max_body_mb=1)) as live:
        status, answer = exchange(live.address, post_head(None), [chunk] * 20)  # 1.28 MB, no closing chunk
    assert (status, answer) == (413, {"error": "the request body is over 1 MB; the service takes at most 1 MB (max_body_mb)"})


def test_too_many_inputs_past_the_body_limit_are_refused_by_size_before_parsing(client):
    body = b'{"inputs": [' + b"[0.5]," * 3_000_000 + b"[0.5]]}"  # 18 MB: over the default 16 MB
    assert_one_line_error(client.post("/predict", content=body), 413, "18.0 MB", "at most 16 MB")


def test_health_answers_at_once_while_a_large_body_is_sent(image_model):
    """A 40 MB body of numbers (it was read and parsed on the event loop, stalling ``/health`` for
    seconds) is refused from its length while it uploads, and ``/health`` keeps answering."""
    body = b'{"inputs": [' + b"[0.5, 0.25, 0.125], " * 2_000_000 + b"[0.5]]}"
    answers: list[tuple[int, dict]] = []
    with live_server(create_app(image_model, max_body_mb=1)) as live:
        upload = threading.Thread(target=lambda: answers.append(exchange(live.address, post_head(len(body)), [body], 30)))
        upload.start()
        latencies = []
        while upload.is_alive() or not latencies:
            latencies.append(health_latency(live.address))
            time.sleep(0.01)
        upload.join()
    assert answers[0][0] == 413 and "40.0 MB" in answers[0][1]["error"]
    assert max(latencies) < 0.5, latencies


def test_bodies_are_parsed_away_from_the_event_loop(client, monkeypatch):
    """The JSON of a request is read in a worker thread: no event loop runs where it is parsed."""
    parsed_in_loop = []

    def parse(body: bytes):
        try:
            asyncio.get_running_loop()
            parsed_in_loop.append(True)
        except RuntimeError:
            parsed_in_loop.append(False)
        return original(body)

    original = serve_app.parse_predict_body
    monkeypatch.setattr(serve_app, "parse_predict_body", parse)
    assert client.post("/predict", json={"inputs": [GOOD]}).status_code == 200
    assert parsed_in_loop == [False]


def closed_after(sock: socket.socket, trickle: bytes, limit_s: float = 3.0) -> float | None:
    """Sends ``trickle`` every 0.1 s until the server closes ``sock``: the seconds that took, or
    None if it stayed open ``limit_s``."""
    began = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - began < limit_s:
        try:
            sock.sendall(trickle)
            if sock.recv(1024) == b"":
                return time.monotonic() - began
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - began
    return None


def test_a_request_head_sent_a_line_at_a_time_is_cut_off_at_the_header_timeout(image_model):
    options = ServerOptions(header_timeout_s=0.5).uvicorn_options()
    with live_server(create_app(image_model), **options) as live:
        with socket.create_connection(live.address, timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n")
            seconds = closed_after(sock, b"X-Slow: 1\r\n")
        assert health_latency(live.address) < 1
    assert seconds is not None and 0.4 < seconds < 2.0, seconds


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(image_model):
    options = ServerOptions(timeout_keep_alive_s=0.3).uvicorn_options()
    with live_server(create_app(image_model), **options) as live:
        with socket.create_connection(live.address, timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
            response.read()
            began = time.monotonic()
            assert sock.recv(1024) == b"" and time.monotonic() - began < 1.5


def test_an_oversized_request_head_is_a_400_and_connections_past_the_limit_a_503(image_model):
    options = ServerOptions(max_header_kb=1, limit_concurrency=2).uvicorn_options()
    with live_server(create_app(image_model), **options) as live:
        with socket.create_connection(live.address, timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 4000)  # head unfinished
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 400
        with socket.create_connection(live.address), socket.create_connection(live.address):  # two idle connections
            connection = http.client.HTTPConnection(*live.address, timeout=5)
            connection.request("GET", "/health")
            assert connection.getresponse().status == 503
            connection.close()


def test_stopping_the_batcher_runs_the_rows_already_queued():
    def forward(rows):
        time.sleep(0.1)
        return {"same": rows}

    async def run() -> tuple[list, Exception]:
        batcher = DynamicBatcher(forward, max_batch_size=2, timeout_ms=0)
        await batcher.start()
        submitted = [asyncio.create_task(batcher.submit(torch.full((1,), float(i)))) for i in range(5)]
        await asyncio.sleep(0.03)  # the first pass runs, three rows wait in the queue
        await batcher.stop()
        try:
            await batcher.submit(torch.ones(1))
        except BatcherClosed as err:
            refused = err
        return await asyncio.gather(*submitted, return_exceptions=True), refused

    answers, refused = asyncio.run(run())
    assert [answer[0]["same"].item() for answer in answers] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert "not running" in str(refused)


def test_shutdown_finishes_the_requests_in_flight_and_takes_no_new_connections(image_model):
    app = create_app(image_model)
    running = threading.Event()
    forward = app.state.batcher.forward

    def slow_forward(rows):
        running.set()
        time.sleep(0.5)
        return forward(rows)

    app.state.batcher.forward = slow_forward
    answers = []
    with live_server(app, **ServerOptions(timeout_graceful_shutdown_s=5).uvicorn_options()) as live:
        body = json.dumps({"inputs": [GOOD]}).encode()
        request = threading.Thread(target=lambda: answers.append(exchange(live.address, post_head(len(body)), [body])))
        request.start()
        assert running.wait(5)
        live.server.should_exit = True
        time.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(live.address, timeout=1)
        request.join()
    assert answers[0][0] == 200 and set(answers[0][1]["predictions"][0]) == set(image_model.tasks)


def test_texts_and_token_ids_equal_net_predict(sequence_model):
    texts = ["a0 b1 | X c2 Y", "c3 c1 c2"]
    ids = sequence_model.tokenizer.encode(texts[1], max_length=32)[0]
    ids = ids[ids != 0].tolist()
    with TestClient(create_app(sequence_model)) as client:
        health = client.get("/health").json()
        response = client.post("/predict", json={"inputs": [*texts, ids]})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        expected = sequence_model.predict(texts)
        assert_matches(predictions[:2], expected)
        assert_matches(predictions[2:], expected, rows=range(1, 2))
        assert_one_line_error(client.post("/predict", json={"inputs": ["a0", [[0.5, 0.5, 0.5]]]}), 422, "input 1")
        assert_one_line_error(client.post("/predict", json={"inputs": [[4, 10_000]]}), 422, "input 0", "10000")
        assert_one_line_error(client.post("/predict", json={"inputs": ["a0", ""]}), 422, "input 1", "no tokens")
        assert_one_line_error(client.post("/predict", json={"inputs": ["a0 zz"]}), 422, "input 0", "zz")
        assert_one_line_error(client.post("/predict/image", files=[("files", ("a.png", b"x", "image/png"))]), 400,
                              "reads tokens")
        assert client.post("/predict", json={"inputs": texts}).status_code == 200
    assert health["input"] == {"kind": "tokens", "max_length": 32, "vocab_size": health["input"]["vocab_size"],
                               "tokenizer": "word", "accepts": "texts or lists of integer token ids"}


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text -> {(sample name, sorted label items): value}, through prometheus-client's parser."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def batch_sizes(samples: dict[tuple[str, tuple], float]) -> dict[int, int]:
    """The forward passes of each size, from the batch-size histogram's cumulative buckets."""
    cumulative = sorted((float(dict(labels)["le"]), count) for (name, labels), count in samples.items()
                        if name == "mhc_batch_size_bucket")
    passes, below = {}, 0.0
    for le, count in cumulative:
        if count > below:
            passes[int(le)] = int(count - below)
        below = count
    return passes


def test_concurrent_requests_share_forward_passes(image_model):
    images = random_images(12, seed=5)
    answers: dict[int, dict] = {}
    with TestClient(create_app(image_model, max_batch_size=4, batch_timeout_ms=300)) as client:
        start = threading.Barrier(len(images))

        def request(i: int) -> None:
            start.wait()
            answers[i] = client.post("/predict", json={"inputs": [png_base64(images[i])]}).json()

        threads = [threading.Thread(target=request, args=(i,)) for i in range(len(images))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        samples = metric_samples(client.get("/metrics").text)
    expected = image_model.predict(images)
    for i in range(len(images)):
        assert_matches(answers[i]["predictions"], expected, rows=range(i, i + 1))
    sizes = batch_sizes(samples)
    assert samples[("mhc_batch_size_sum", ())] == len(images) == sum(size * count for size, count in sizes.items())
    assert 3 <= samples[("mhc_batch_size_count", ())] < len(images) and max(sizes) <= 4


def test_metrics_are_prometheus_text_with_latency_errors_in_flight_and_batch_sizes(client, image_model):
    body = {"inputs": [GOOD, GOOD]}
    assert [client.post("/predict", json=body).status_code for _ in range(2)] == [200, 200]
    assert client.post("/predict", json={"inputs": [7]}).status_code == 422
    assert client.post("/predict", content=b"{}", headers={"content-length": "99999999"}).status_code == 413
    assert client.get("/nowhere/at/all").status_code == 404
    assert client.get("/health").status_code == 200
    with TestClient(create_app(image_model)) as other:  # a second app in the process has registries of its own
        assert other.get("/metrics").status_code == 200
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = metric_samples(response.text)
    requests = {dict(labels)["route"]: count for (name, labels), count in samples.items()
                if name == "mhc_request_duration_seconds_count"}
    assert requests == {"/predict": 4, "/health": 1, "other": 1}
    errors = {tuple(dict(labels).values()): count for (name, labels), count in samples.items()
              if name == "mhc_request_errors_total"}
    assert errors == {("/predict", "422"): 1, ("/predict", "413"): 1, ("other", "404"): 1}
    assert samples[("mhc_requests_in_flight", (("route", "/metrics"),))] == 1  # this request
    assert samples[("mhc_requests_in_flight", (("route", "/predict"),))] == 0
    assert batch_sizes(samples) == {2: 2} and samples[("mhc_batch_size_sum", ())] == 4
    assert samples[("mhc_forward_duration_seconds_count", ())] == 2 and samples[("mhc_batch_queue_inputs", ())] == 0


def test_batcher_splits_a_large_request_into_passes_of_max_batch_size():
    passes = []

    async def run() -> list:
        batcher = DynamicBatcher(lambda rows: {"double": rows * 2}, max_batch_size=4, timeout_ms=0,
                                 on_pass=lambda size, seconds: passes.append(size))
        await batcher.start()
        try:
            return await batcher.submit(torch.arange(10.0))
        finally:
            await batcher.stop()

    outputs = asyncio.run(run())
    assert [out["double"].item() for out in outputs] == [2.0 * i for i in range(10)]
    assert passes == [4, 4, 2]


def test_the_batcher_waits_for_rows_on_their_way_and_only_for_them():
    """With requests being decoded it waits (up to the timeout) and gathers their rows into one
    pass; with none, a lone row runs at once instead of waiting out the timeout."""
    passes, coming = [], {"more": True}

    async def run() -> float:
        batcher = DynamicBatcher(lambda rows: {"same": rows}, max_batch_size=8, timeout_ms=300,
                                 on_pass=lambda size, seconds: passes.append(size), more_coming=lambda: coming["more"])
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(torch.ones(1)))
            await asyncio.sleep(0.05)
            await asyncio.gather(first, batcher.submit(torch.ones(2)))  # one pass of 3
            coming["more"] = False
            began = time.perf_counter()
            await batcher.submit(torch.ones(1))
            return time.perf_counter() - began
        finally:
            await batcher.stop()

    lone_seconds = asyncio.run(run())
    assert passes == [3, 1] and lone_seconds < 0.5


def test_rows_queued_while_the_model_runs_make_the_next_pass():
    passes = []

    def forward(rows):
        time.sleep(0.1)
        return {"same": rows}

    async def run() -> None:
        batcher = DynamicBatcher(forward, max_batch_size=8, timeout_ms=0, on_pass=lambda size, seconds: passes.append(size))
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(torch.ones(1)))
            await asyncio.sleep(0.03)  # the first pass is running: the event loop keeps taking rows
            await asyncio.gather(first, *[batcher.submit(torch.ones(1)) for _ in range(10)])
        finally:
            await batcher.stop()

    asyncio.run(run())
    assert passes == [1, 8, 2]


def test_a_lone_request_does_not_wait_out_the_batch_timeout_and_health_never_waits_on_the_model(image_model):
    app = create_app(image_model, batch_timeout_ms=3000)
    with TestClient(app) as client:
        began = time.perf_counter()
        assert client.post("/predict", json={"inputs": [GOOD]}).status_code == 200
        assert time.perf_counter() - began < 1.5
        running, forward = threading.Event(), app.state.batcher.forward

        def slow_forward(rows):
            running.set()
            time.sleep(1.0)
            return forward(rows)

        app.state.batcher.forward = slow_forward
        request = threading.Thread(target=lambda: client.post("/predict", json={"inputs": [GOOD]}))
        request.start()
        assert running.wait(5)
        began = time.perf_counter()
        assert client.get("/health").status_code == 200
        assert time.perf_counter() - began < 0.5
        request.join()


def test_cli_bad_model_path_is_one_line_and_exit_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve_cli.main([str(tmp_path / "missing.ckpt")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "missing.ckpt" in err and "not found" in err


def test_cli_serves_an_export_folder_with_the_given_options(image_model, tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setattr(serve_cli.uvicorn, "run", lambda app, **kwargs: calls.update(app=app, **kwargs))
    monkeypatch.setattr(serve_cli.gc, "freeze", lambda: calls.update(froze=True))
    serve_cli.main([str(mhc.save_export(image_model, tmp_path / "export")), "--port", "8123", "--max-batch-size", "8",
                    "--max-body-mb", "2.5",
                    "--header-timeout", "3", "--timeout-keep-alive", "2", "--max-header-kb", "8", "--limit-concurrency", "64",
                    "--timeout-graceful-shutdown", "7"])
    assert calls["port"] == 8123 and calls["host"] == "127.0.0.1"
    assert (calls["timeout_keep_alive"], calls["h11_max_incomplete_event_size"], calls["limit_concurrency"],
            calls["timeout_graceful_shutdown"]) == (2, 8 * 1024, 64, 7)
    assert issubclass(calls["http"], H11Protocol)
    assert calls["froze"]  # the objects alive after loading are left out of garbage collections
    with TestClient(calls["app"]) as client:
        metadata = client.get("/metadata").json()
    assert metadata["batching"]["max_batch_size"] == 8 and metadata["limits"]["max_body_mb"] == 2.5
    assert [task["name"] for task in metadata["tasks"]] == list(image_model.tasks)


def test_a_failing_forward_pass_fails_its_requests_only():
    calls = []

    def forward(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return {"same": rows}

    async def run() -> torch.Tensor:
        batcher = DynamicBatcher(forward, max_batch_size=8, timeout_ms=0)
        await batcher.start()
        try:
            with pytest.raises(RuntimeError, match="out of memory"):
                await batcher.submit(torch.ones(2))
            return (await batcher.submit(torch.full((3,), 5.0)))[2]["same"]
        finally:
            await batcher.stop()

    assert asyncio.run(run()).item() == 5.0 and calls == [2, 3]
