"""``cdc serve``: a codec over HTTP (MLflow's scoring server, hardened: ``cdc.registry.serving``).

    cdc serve -m small-q1 [-p 5001] [--host 127.0.0.1] [--workers N] [--max-pixels N] [--timeout S]
    cdc serve -m models:/cdc-x-rho0.9@q1

The model is any reference ``cdc compress`` takes (a checkpoint, a shipped name, ``models:/…`` in
the project's registry, ``best:…``): it is resolved and loaded, and the port checked, before the
server starts, so a bad model or a taken port fails in seconds with one line. The server runs in
this process (uvicorn; with ``--workers N``, N worker processes that die with it): closing the
terminal (SIGHUP), Ctrl-C or SIGTERM stop it, and nothing is left behind. The request and response
formats: ``cdc.registry.pyfunc``.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket

import uvicorn
from uvicorn.supervisors import Multiprocess

from cdc.argtypes import PIXELS, number
from cdc.cli.common import EXIT_OK, CLIError, load_coder, resolve

PORT = number(int, 1, 65535, "a port number")
TIMEOUT = number(float, 1, 86400, "a number of seconds")
WORKERS = number(int, 1, 64, "an integer")


def check_port(host: str, port: int) -> None:
    """Raise ``CLIError`` unless ``port`` on ``host`` can be listened on now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CLIError(f"--host {host}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            taken = exc.errno == errno.EADDRINUSE
            raise CLIError(f"port {port} on {host}: {'already in use' if taken else exc.strerror}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve ``args.model`` until stopped; 0 after a clean stop."""
    from cdc.limits import SERVICE_MAX_PIXELS
    from cdc.registry.pyfunc import MAX_PIXELS_ENV, TIMEOUT_ENV
    from cdc.registry.serving import CHECKPOINT_ENV

    check_port(args.host, args.port)
    checkpoint = resolve(args.model)
    load_coder(str(checkpoint))  # a broken checkpoint fails here, in one line naming the user's path
    os.environ.update({CHECKPOINT_ENV: str(checkpoint), TIMEOUT_ENV: f"{args.timeout:g}",
                       MAX_PIXELS_ENV: str(args.max_pixels or SERVICE_MAX_PIXELS)})
    config = uvicorn.Config("cdc.registry.serving:create_app", factory=True, host=args.host, port=args.port,
                            workers=args.workers, log_level="warning", timeout_graceful_shutdown=10)
    print(f"serving {args.model} on http://{args.host}:{args.port}/invocations (Ctrl-C stops it)", flush=True)
    try:
        if args.workers > 1:
            _Supervisor(config, sockets=[config.bind_socket()]).run()
        else:
            server = uvicorn.Server(config)
            # the terminal closed: a clean stop (handle_exit would re-raise the signal after the shutdown)
            signal.signal(signal.SIGHUP, lambda *_: setattr(server, "should_exit", True))
            server.run()
    except OSError as exc:
        raise CLIError(f"port {args.port} on {args.host}: {exc.strerror or exc}") from None
    return EXIT_OK


class _Supervisor(Multiprocess):
    """uvicorn's worker supervisor, except that SIGHUP (the terminal closed) stops the server
    instead of restarting its workers."""

    def handle_hup(self) -> None:
        self.should_exit.set()


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``serve`` on the ``cdc`` parser."""
    p = sub.add_parser("serve", help="serve a codec over HTTP (MLflow scoring server: POST /invocations)")
    p.add_argument("-m", "--model", required=True,
                   help="checkpoint, shipped name (small-q1), models:/NAME@ALIAS, best:... (the project's registry)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("-p", "--port", type=PORT, default=5001)
    p.add_argument("--workers", type=WORKERS, default=1, help="server processes (each loads the model)")
    p.add_argument("--max-pixels", type=PIXELS, help="refuse images and files with more pixels "
                   "(default 64 Mi: a request's image is held in memory)")
    p.add_argument("--timeout", type=TIMEOUT, default=60.0,
                   help="seconds a request may take (then 504, and its remaining work stops)")
    p.set_defaults(func=cmd_serve)
