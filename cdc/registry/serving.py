"""The HTTP service of ``cdc serve``: MLflow's scoring server around the codec's pyfunc model, in
this process, hardened for requests from anyone.

MLflow's app (``POST /invocations``, ``GET /ping``, ``/health``, ``/version``; its request timeout)
is wrapped so that

* a request in the ``instances`` or ``inputs`` form that lists rows keeps every row as sent (MLflow
  turns such a list into columns, which loses rows with different keys);
* an error answer is one line: no stack trace reaches a client, and a request MLflow cannot parse
  at all (JSON nested thousands deep, a truncated Parquet body) is a 400, not a 500;
* the served model is built here from a codec checkpoint, in a temporary folder that is removed
  as soon as it is loaded (nothing is left behind whatever ends the process).

``create_app`` is what uvicorn runs (``factory=True``): with several workers each process
builds its own copy, and dies with the server that started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from pathlib import Path

CHECKPOINT_ENV = "CDC_SERVE_CHECKPOINT"
"""Environment variable naming the local codec checkpoint the workers serve."""
_ROWS_FORMS = ("instances", "inputs")


def load_served_model(checkpoint: str | Path):
    """The codec checkpoint as a loaded MLflow pyfunc model (built in a folder removed at once)."""
    import mlflow

    from cdc.registry.pyfunc import save_pyfunc

    with tempfile.TemporaryDirectory(prefix="cdc-serve-") as tmp:
        return mlflow.pyfunc.load_model(str(save_pyfunc(checkpoint, Path(tmp) / "model")))


def _die_with_parent() -> None:
    """A worker process ends with the server process that started it (Linux; elsewhere a no-op)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def rows_as_records(body: bytes) -> bytes:
    """A JSON request whose ``instances``/``inputs`` is a list of row objects, as ``dataframe_records``
    (the same rows, in order); any other body unchanged."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        return body  # MLflow's parser answers it
    if not isinstance(request, dict):
        return body
    for form in _ROWS_FORMS:
        rows = request.get(form)
        if isinstance(rows, list) and rows and all(isinstance(row, dict) for row in rows):
            others = {k: v for k, v in request.items() if k != form}
            return json.dumps({"dataframe_records": rows, **others}).encode()
    return body


def one_line(message: str, limit: int = 500) -> str:
    """The first line of ``message``, at most ``limit`` characters (MLflow quotes whole requests)."""
    first = (message or "").strip().splitlines()[0] if (message or "").strip() else "bad request"
    return first if len(first) <= limit else first[: limit - 1] + "…"


class Guard:
    """ASGI middleware around MLflow's scoring app (see the module docstring)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/invocations" and scope["method"] == "POST":
            receive = await self._rewritten(scope, receive)
        started: dict = {}

        async def guarded_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    return await send(message)
                started.update(message, body=b"")  # an error: held until its body is complete
                return None
            if not started:
                return await send(message)
            started["body"] += message.get("body", b"")
            if not message.get("more_body"):
                await _answer(send, started["status"], started["body"])
            return None

        try:
            await self.app(scope, receive, guarded_send)
        except Exception as exc:  # what MLflow lets escape (RecursionError on deep JSON, ...)
            await _answer(send, 400, json.dumps({"message": f"{type(exc).__name__}: {exc}"}).encode())

    @staticmethod
    async def _rewritten(scope, receive):
        """``receive`` replaying the request's whole body, JSON row lists as ``dataframe_records``."""
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        headers = dict(scope.get("headers") or [])
        if headers.get(b"content-type", b"").startswith(b"application/json"):
            body = rows_as_records(body)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()  # a disconnect, if the client goes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay


async def _answer(send, status: int, content: bytes) -> None:
    """An error answer as one JSON line: MLflow's ``error_code`` kept, its ``message`` cut to its first
    line, no ``stack_trace``; a 500 (a request MLflow could not parse) becomes a 400."""
    try:
        error = json.loads(content)
    except ValueError:
        error = {"message": content.decode(errors="replace")}
    if not isinstance(error, dict):
        error = {"message": str(error)}
    answer = json.dumps({"error_code": error.get("error_code", "BAD_REQUEST"),
                         "message": one_line(str(error.get("message")))}).encode()
    await send({"type": "http.response.start", "status": 400 if status == 500 else status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


def create_app():
    """The hardened scoring app of the checkpoint named by ``$CDC_SERVE_CHECKPOINT`` (uvicorn's factory)."""
    import multiprocessing

    from mlflow.pyfunc import scoring_server

    if multiprocessing.parent_process() is not None:  # a worker of `cdc serve --workers N`
        _die_with_parent()
    app = scoring_server.init(load_served_model(os.environ[CHECKPOINT_ENV]))
    app.add_middleware(Guard)
    return app
