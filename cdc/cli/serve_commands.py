"""``cdc serve``: a codec over HTTP, through MLflow's scoring server.

    cdc serve -m small-q1 [-p 5001] [--host 127.0.0.1]
    cdc serve -m models:/cdc-x-rho0.9@q1

A registry URI (``models:/…``, ``runs:/…``) or a pyfunc model directory is served as it is; any other
model reference (a checkpoint path, a shipped name, ``best:…``) is first wrapped as a pyfunc model
in a temporary folder (:func:`cdc.pyfunc.save_pyfunc`). MLflow starts its server as the program
``uvicorn`` found on ``PATH``; this command puts its own interpreter's ``bin`` folder first, so it works
from an inactive virtual environment too. The request and response formats: :mod:`cdc.pyfunc`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cdc.cli.common import EXIT_OK, resolve

MLFLOW_URIS = ("models:/", "runs:/")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve ``args.model`` until interrupted; the server's exit status."""
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    with tempfile.TemporaryDirectory(prefix="cdc-serve-") as tmp:
        uri = args.model
        if not uri.startswith(MLFLOW_URIS) and not (Path(uri) / "MLmodel").is_file():
            from cdc.pyfunc import save_pyfunc

            uri = str(save_pyfunc(resolve(uri), Path(tmp) / "model"))
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
               "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
        print(f"serving {args.model} on http://{args.host}:{args.port}/invocations", flush=True)
        # MLflow runs the server as a grandchild (uvicorn): the whole group goes when this command does
        server = subprocess.Popen(cmd, env=env, start_new_session=True)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return server.wait() or EXIT_OK
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            signal.signal(signal.SIGTERM, previous)
            stop_group(server)


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to ``proc``'s process group; SIGKILL to whatever is left of it after ``grace`` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader: a zombie still counts as a member of its group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``serve`` on the ``cdc`` parser."""
    p = sub.add_parser("serve", help="serve a codec over HTTP (MLflow scoring server: POST /invocations)")
    p.add_argument("-m", "--model", required=True,
                   help="checkpoint, shipped name (small-q1), models:/NAME@ALIAS, best:..., or a pyfunc folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("-p", "--port", type=int, default=5001)
    p.add_argument("--workers", type=int, default=1, help="server processes (each loads the model)")
    p.set_defaults(func=cmd_serve)
