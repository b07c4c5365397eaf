"""``mhc-serve MODEL``: an HTTP prediction service for a checkpoint or an export folder.

    mhc-serve outputs/train/<date>/checkpoints/last.ckpt --port 8000 --max-batch-size 32

One process, one model: its requests share a dynamic batcher (see :mod:`mhc.serve`). The
model is loaded safely with :func:`mhc.load`; a missing or unusable MODEL is one error line
and exit code 1. Request bodies are held to --max-body-mb; connections to --header-timeout,
--timeout-keep-alive, --max-header-kb and --limit-concurrency; on SIGTERM or Ctrl-C, requests
in flight get --timeout-graceful-shutdown seconds to finish.
"""

from __future__ import annotations

import argparse
import gc
import sys
from typing import Sequence

import torch
import uvicorn

from mhc.cli.common import console, print_error
from mhc.errors import ConfigError, MhcError
from mhc.io import load
from mhc.model.net import MultiHeadNet
from mhc.serve import ServerOptions, create_app


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mhc-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="a checkpoint (.ckpt) or an export folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    parser.add_argument("--max-batch-size", type=positive_int, default=32,
                        help="most inputs in one forward pass; 1 turns batching off (default: %(default)s)")
    parser.add_argument("--batch-timeout-ms", type=non_negative_float, default=5.0,
                        help="longest wait for more inputs before a forward pass (default: %(default)s)")
    parser.add_argument("--max-inputs", type=positive_int, default=256,
                        help="most inputs in one request (default: %(default)s)")
    parser.add_argument("--max-body-mb", type=positive_float, default=16.0,
                        help="largest request body in MB, refused with 413 before it is read (default: %(default)s)")
    add_connection_arguments(parser)
    parser.add_argument("--device", default="cpu", help="torch device for the model (default: %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser.parse_args(argv)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """How connections are held (:class:`mhc.serve.ServerOptions`), defaults included."""
    defaults = ServerOptions()
    parser.add_argument("--header-timeout", type=positive_float, default=defaults.header_timeout_s,
                        help="seconds for a request head to arrive before its connection is closed (default: %(default)s)")
    parser.add_argument("--timeout-keep-alive", type=positive_float, default=defaults.timeout_keep_alive_s,
                        help="seconds an idle keep-alive connection stays open (default: %(default)s)")
    parser.add_argument("--max-header-kb", type=positive_int, default=defaults.max_header_kb,
                        help="largest request head in KB; more is a 400 (default: %(default)s)")
    parser.add_argument("--limit-concurrency", type=positive_int, default=defaults.limit_concurrency,
                        help="most connections and requests at once; more are answered 503 (default: %(default)s)")
    parser.add_argument("--timeout-graceful-shutdown", type=non_negative_float, default=defaults.timeout_graceful_shutdown_s,
                        help="seconds requests in flight get to finish on shutdown (default: %(default)s)")


def server_options(args: argparse.Namespace) -> ServerOptions:
    return ServerOptions(header_timeout_s=args.header_timeout, timeout_keep_alive_s=args.timeout_keep_alive,
                         max_header_kb=args.max_header_kb, limit_concurrency=args.limit_concurrency,
                         timeout_graceful_shutdown_s=args.timeout_graceful_shutdown)


def load_model(path: str, device: str) -> MultiHeadNet:
    """``mhc.load(path)`` on ``device``; an unknown or unavailable device is a :class:`ConfigError`."""
    try:
        target = torch.device(device)
        torch.empty(0, device=target)
    except (RuntimeError, AssertionError) as err:
        raise ConfigError(f"device '{device}' is not available ({str(err).splitlines()[0]})") from None
    return load(path, map_location=target)


def freeze_startup_objects() -> None:
    """Leaves the objects alive once the model is loaded (the imported modules and the model, some
    300k objects) out of later garbage collections: under load a full collection over them took
    about 270 ms, and every request waited, ``/health`` included."""
    gc.collect()
    gc.freeze()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        model = load_model(args.model, args.device)
    except MhcError as err:
        print_error(err)
        sys.exit(1)
    app = create_app(model, max_batch_size=args.max_batch_size, batch_timeout_ms=args.batch_timeout_ms,
                     max_inputs=args.max_inputs, max_body_mb=args.max_body_mb)
    freeze_startup_objects()
    console.print(f"serving {args.model}: {len(model.tasks)} tasks ({', '.join(model.tasks)}) on "
                  f"http://{args.host}:{args.port}, batches of up to {args.max_batch_size}", highlight=False, soft_wrap=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, **server_options(args).uvicorn_options())


if __name__ == "__main__":
    main()
