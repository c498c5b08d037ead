"""A Prefect API server for one script's flows, that goes when the script goes.

Without ``PREFECT_API_URL``, Prefect starts a temporary server of its own as a subprocess; a script
killed with ``kill -9`` leaves it running (listening, about 190 MB). ``temporary_server`` starts
``prefect server start`` on a free loopback port instead, as a child that the kernel ends with this
process however it ends (``PR_SET_PDEATHSIG``), and points this process's flows at it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pipelines.launchers import free_port

STARTUP_TIMEOUT_S = 120.0


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux: it is stopped at exit instead
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def temporary_server(home: Path, log: Path, timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[str]:
    """A Prefect server (state in ``home``, output in ``log``) for the flows run inside the block;
    yields its API URL. Already set ``PREFECT_API_URL`` is used as it is instead.

    Raises:
        RuntimeError: the server did not answer its health check within ``timeout_s`` seconds.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with log.open("a") as out:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                  preexec_fn=_die_with_parent)
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server on port {port} did not answer within {timeout_s:g} s "
                                   f"(its log: {log})")
            time.sleep(0.5)
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False
