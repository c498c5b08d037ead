"""The codec as a pyfunc model and over HTTP: image files in, ``.cdc`` files out (and back), in batches."""

from __future__ import annotations

import base64
import io
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import requests
from conftest import photo, run_cli
from PIL import Image


def _file(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.fixture(scope="module")
def pyfunc(tmp_path_factory):
    from conftest import tiny_codec

    from cdc.checkpoint import save_codec
    from cdc.pyfunc import CDCPyfunc

    model = save_codec(tiny_codec(), tmp_path_factory.mktemp("serve") / "model")
    wrapped = CDCPyfunc()
    wrapped.load_context(SimpleNamespace(artifacts={"checkpoint": str(model)}))
    return model, wrapped


def test_a_batch_of_files_comes_back_as_cdc_files_and_a_bad_row_stays_its_own(pyfunc, tmp_path):
    model, wrapped = pyfunc
    a, b = photo("coffee", (64, 96)), photo("astronaut", (80, 64))
    out = wrapped.predict(None, pd.DataFrame({"image": [_file(a), _file(b, "JPEG"), b"\x00not an image"]}))
    assert list(out["height"][:2]) == [64, 80] and list(out["width"][:2]) == [96, 64]
    assert out["error"][0] is None and "not a recognised image format" in out["error"][2]
    (tmp_path / "a.cdc").write_bytes(out["cdc"][0])
    assert out["bpp"][0] == pytest.approx(8 * len(out["cdc"][0]) / (64 * 96))
    # the bytes are a real .cdc file: the CLI decodes them to the reconstruction the model returned
    r = run_cli("decompress", tmp_path / "a.cdc", "-m", model, "-o", tmp_path / "a.png")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), _pixels(out["reconstruction"][0]))
    # and a .cdc file in decodes (base64 text, as the JSON forms deliver it, is understood too)
    back = wrapped.predict(None, [{"cdc": base64.b64encode(out["cdc"][1]).decode()}])
    assert np.array_equal(_pixels(back["reconstruction"][0]), _pixels(out["reconstruction"][1]))
    assert back["cdc"][0] == out["cdc"][1]
    assert wrapped.predict(None, {"image": [_file(a)]})["cdc"][0] == out["cdc"][0]  # a dict of columns too


def test_a_truncated_cdc_file_is_refused_in_its_row(pyfunc):
    _, wrapped = pyfunc
    good = wrapped.predict(None, pd.DataFrame({"image": [_file(photo("coffee", (64, 64)))]}))["cdc"][0]
    out = wrapped.predict(None, pd.DataFrame({"cdc": [good[: len(good) // 2]], "image": [None]}))
    assert out["cdc"][0] is None or pd.isna(out["cdc"][0])
    assert out["error"][0] and "\n" not in out["error"][0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_cdc_serve_answers_batches_over_http(pyfunc, tmp_path):
    """The real scoring server (``cdc serve`` -> ``mlflow models serve``), a real HTTP client."""
    model, _ = pyfunc
    port = _free_port()
    env_path = "/usr/bin:/bin"  # no virtualenv on PATH: `cdc serve` finds uvicorn itself
    server = subprocess.Popen([sys.executable, "-m", "cdc", "serve", "-m", str(model), "-p", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={"PATH": env_path, "HOME": str(tmp_path)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            assert server.poll() is None, server.stdout.read()[-3000:]
            try:
                if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        a, b = photo("coffee", (64, 96)), photo("astronaut", (64, 64))
        files = [base64.b64encode(_file(x)).decode() for x in (a, b)]
        r = requests.post(f"{url}/invocations", json={"dataframe_records": [{"image": f} for f in files]}, timeout=120)
        assert r.status_code == 200, r.text[:2000]
        rows = r.json()["predictions"]
        assert [(row["height"], row["width"]) for row in rows] == [(64, 96), (64, 64)]
        cdc = base64.b64decode(rows[0]["cdc"])
        (tmp_path / "a.cdc").write_bytes(cdc)
        decoded = run_cli("decompress", tmp_path / "a.cdc", "-m", model, "-o", tmp_path / "a.png")
        assert decoded.returncode == 0, decoded.stderr
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")),
                              _pixels(base64.b64decode(rows[0]["reconstruction"])))
        # the other JSON forms, and decoding a .cdc file sent back
        r = requests.post(f"{url}/invocations", json={"instances": [{"cdc": rows[1]["cdc"]}]}, timeout=120)
        assert r.status_code == 200, r.text[:2000]
        answer = r.json()["predictions"][0]
        assert answer["reconstruction"] == rows[1]["reconstruction"], answer["error"]
        r = requests.post(f"{url}/invocations", json={"inputs": {"image": [files[0]]}, "params": {"steps": 2}},
                          timeout=120)
        assert r.status_code == 200, r.text[:2000]
        assert r.json()["predictions"][0]["cdc"] != rows[0]["cdc"]  # 2 steps recorded in the file
    finally:
        server.terminate()
        server.wait(timeout=60)
    with pytest.raises(requests.ConnectionError):  # the scoring server went with the command
        requests.get(f"{url}/ping", timeout=5)
