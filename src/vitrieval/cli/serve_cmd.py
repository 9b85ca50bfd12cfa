"""``vitrieval serve``: an HTTP search service and web page over an index folder.

    vitrieval serve --index catalog.idx                    # http://127.0.0.1:8000/  (API docs at /docs)
    vitrieval serve --index catalog.idx --host 0.0.0.0 --port 9000 --max-upload-mb 20

    vitrieval serve --index catalog.idx --write-token-file token.txt   # + POST /images, DELETE /images/{id}

Searches need no authentication: keep the default loopback host unless it sits behind a proxy that adds it.
Writes are off unless a write token is given (``--write-token-file`` or the environment variable
``VITRIEVAL_WRITE_TOKEN``); then ``POST /images`` and ``DELETE /images/{id}`` need ``Authorization: Bearer
<token>``, are durable (journalled, fsynced) before they are answered, and are compacted into the index folder in
the background. With writes on, a folder this process cannot write (read-only, another user's, immutable) or that
another process writes is refused at start, in one line (exit 2), before the model is loaded: serve it without a
token to search it read-only.
A write the disk refuses later is a 507 (full) or 503 in one line, and ``/healthz`` says ``writable: false``.
Concurrent queries are embedded in batches (``--max-batch``, ``--max-wait-ms``), under the index's own mixed
precision unless ``--query-amp`` says otherwise (:mod:`vitrieval.index.query_embedding`). A client that does not
send its request head, or then its body, within ``--request-timeout-s`` is answered 408 and disconnected
(:mod:`vitrieval.serve.timeouts`).
"""

from __future__ import annotations

import argparse
import errno
import logging

from vitrieval.cli import CLIError
from vitrieval.cli.index_cmd import load_index_for_queries
from vitrieval.cli.retrieval_options import add_device_argument, add_model_arguments
from vitrieval.serve.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS
from vitrieval.serve.timeouts import DEFAULT_REQUEST_TIMEOUT_S

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``serve``."""
    parser = subparsers.add_parser("serve", help="serve an index over HTTP (API + web page)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="index folder written by `vitrieval index`")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload (default 10)")
    parser.add_argument("--max-k", type=int, default=100, help="largest k a query may ask for (default 100)")
    add_model_arguments(parser, checkpoint_help="the index's model, if it moved since the index was built")
    add_device_argument(parser)
    parser.add_argument("--write-token-file", help="file holding the bearer token that writes need (default: the "
                                                   "environment variable VITRIEVAL_WRITE_TOKEN; neither: read-only)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="most queries embedded in one forward pass (1 = unbatched; default %(default)s, "
                             "measured by benchmarks/serve_latency.py)")
    parser.add_argument("--max-wait-ms", type=float, default=DEFAULT_MAX_WAIT_MS,
                        help="how long a batch waits for more queries (default %(default)g, measured too)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads for embedding queries (default: torch's choice; 1 is steadier on "
                             "a machine shared with other work)")
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnx"],
                        help="what embeds the queries: torch (default) or onnx (the model's model.onnx from "
                             "`vitrieval export`, run by onnxruntime)")
    parser.add_argument("--query-amp", choices=["index", "auto", "bf16", "off"], default="index",
                        help="autocast of the queries' forward pass (torch runtime): index (default: the mode the "
                             "index's descriptors were made with), auto, bf16 (about 2x faster on a CPU with native "
                             "bf16, descriptors within ~1e-4 in cosine), off; added images keep the index's mode")
    parser.add_argument("--request-timeout-s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
                        help="seconds a client has to send a request head, and then its body, before the connection "
                             "is closed (408); default %(default)g, measured by benchmarks/serve_connections.py")
    return parser


def check_can_listen(host: str, port: int) -> None:
    """Refuse, before anything is loaded or printed, an address this process cannot listen on (a port in use)."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as exc:
        hint = "; another server is on that port: stop it or pick another --port" \
            if getattr(exc, "errno", None) == errno.EADDRINUSE else ""
        raise CLIError(f"cannot listen on {host}:{port} ({exc.strerror or exc}){hint}") from None


def run(args: argparse.Namespace) -> int:
    """Load the index and its model, then serve until interrupted."""
    import uvicorn

    from vitrieval.serve.app import create_app

    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_k < 1:
        raise CLIError("--max-upload-mb must be > 0 and --max-k >= 1")
    if args.threads < 0:
        raise CLIError(f"--threads must be >= 0, got {args.threads}")
    if args.max_batch < 1 or args.max_wait_ms < 0:
        raise CLIError(f"--max-batch must be >= 1 and --max-wait-ms >= 0, got {args.max_batch}, {args.max_wait_ms}")
    from vitrieval.serve.timeouts import uvicorn_options

    timeout_s = args.request_timeout_s
    if not timeout_s > 0:
        raise CLIError(f"--request-timeout-s must be > 0, got {args.request_timeout_s}")
    if args.query_amp != "index" and args.runtime == "onnx":
        raise CLIError(f"--query-amp {args.query_amp} needs --runtime torch (the onnx runtime runs in float32)")
    batching = {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms}
    from vitrieval.serve.auth import read_write_token

    try:
        token = read_write_token(args.write_token_file)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.threads and args.runtime == "torch":
        import torch

        torch.set_num_threads(args.threads)
    check_can_listen(args.host, args.port)
    index = load_index_for_queries(args, runtime=args.runtime, threads=args.threads)
    app = create_app(index, max_upload_bytes=int(args.max_upload_mb * 2 ** 20), max_k=args.max_k,
                     write_token=token, query_amp=None if args.query_amp == "index" else args.query_amp,
                     request_timeout_s=timeout_s, **batching)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: searches need no authentication", args.host)
    writes = "writes on (bearer token)" if token else "read-only"
    print(f"serving {len(index)} images from {args.index} at http://{args.host}:{args.port}/ (docs: /docs; "
          f"{writes})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", **uvicorn_options(timeout_s))
    return 0
