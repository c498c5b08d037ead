"""The codec as a pyfunc model and as an HTTP service: image files in, ``.cdc`` files out (and back).

In process: every request row gets exactly one answer, in order; bad rows get their own one-line
error; the limits of :mod:`cdc.limits` and the request timeout bound every row. Over HTTP (slow):
``cdc serve`` of a model in the project's registry, real clients, hostile bodies, and the server
as a process (a taken port, a bad model, SIGHUP, ``kill -9``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import requests
from conftest import REPO, free_port, photo, run_cli
from PIL import Image


def _file(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **options)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.fixture(scope="module")
def pyfunc(tmp_path_factory):
    from conftest import tiny_codec

    from cdc.registry.pyfunc import CDCPyfunc
    from cdc.zoo.checkpoint import save_codec

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
    # a .cdc file in decodes (base64 text, as the JSON forms deliver it, is understood too)
    back = wrapped.predict(None, [{"cdc": _b64(out["cdc"][1])}])
    assert np.array_equal(_pixels(back["reconstruction"][0]), _pixels(out["reconstruction"][1]))
    assert back["cdc"][0] == out["cdc"][1]
    assert wrapped.predict(None, {"image": [_file(a)]})["cdc"][0] == out["cdc"][0]  # a dict of columns too


def test_every_row_gets_exactly_one_answer_in_order(pyfunc):
    _, wrapped = pyfunc
    png = _file(photo("coffee", (64, 64)))
    cdc = wrapped.predict(None, pd.DataFrame({"image": [png]}))["cdc"][0]
    rows = [{"image": _b64(png)}, {"cdc": _b64(cdc)}, {"img": _b64(png)}, {}, {"image": _b64(png), "cdc": _b64(cdc)},
            {"image": "abc"}, {"image": 12345}, {"image": None}]
    out = wrapped.predict(None, pd.DataFrame(rows, dtype=object))
    assert len(out) == len(rows)
    assert list(out["height"][:2]) == [64, 64] and list(out["error"][:2]) == [None, None]
    errors = list(out["error"][2:])
    assert errors[0] == "unknown key 'img' (a row has 'image' or 'cdc')"
    assert errors[1] == errors[5] == "a row needs an 'image' (file bytes) or a 'cdc' (a .cdc file)"
    assert errors[2] == "give 'image' or 'cdc' in a row, not both"
    assert errors[3] == "image: not base64 text (a file travels base64-encoded in JSON)"
    assert errors[4] == "image: expected base64 text or file bytes, not int"
    # bare values (no column): a .cdc file by its magic bytes, anything else an image
    bare = wrapped.predict(None, [_b64(cdc), _b64(png)])
    assert list(bare["error"]) == [None, None] and bare["cdc"][0] == cdc
    # columns of different lengths (MLflow's form of rows with different keys) cannot be aligned
    out = wrapped.predict(None, {"image": [_b64(png), _b64(png)], "cdc": [_b64(cdc)]})
    assert len(out) == 1 and "columns have different lengths" in out["error"][0]


def test_plain_text_images_and_conversions(pyfunc):
    """An ASCII PPM is an image whether it comes as bytes or as base64 text; what the CLI warns about
    (CMYK, 16-bit, alpha, frames) comes back in ``warnings``."""
    _, wrapped = pyfunc
    ppm = b"P3\n64 64\n255\n" + b" ".join(b"200 100 50" for _ in range(64 * 64)) + b"\n"
    out = wrapped.predict(None, pd.DataFrame({"image": [ppm, _b64(ppm)]}, dtype=object))
    assert list(out["error"]) == [None, None] and list(out["width"]) == [64, 64]
    rgb = photo("coffee", (64, 64))
    rgba = np.dstack([rgb, np.full((64, 64), 128, np.uint8)])
    frames = io.BytesIO()
    Image.fromarray(rgb).save(frames, format="GIF", save_all=True, append_images=[Image.fromarray(rgb[::-1])])
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG")
    deep = io.BytesIO()
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(deep, format="PNG")
    out = wrapped.predict(None, pd.DataFrame({"image": [_file(rgba), frames.getvalue(), cmyk.getvalue(),
                                                         deep.getvalue()]}))
    assert list(out["error"]) == [None] * 4
    assert "alpha" in out["warnings"][0] and "frames" in out["warnings"][1] and "CMYK" in out["warnings"][2]
    assert "16-bit" in out["warnings"][3] or "8-bit" in out["warnings"][3]


def test_the_limits_bound_every_row(pyfunc, monkeypatch):
    from test_adversarial import crafted

    model, wrapped = pyfunc
    png = _file(photo("coffee", (64, 64)))
    out = wrapped.predict(None, pd.DataFrame({"image": [png]}), params={"steps": 8193})
    assert out["error"][0] == "params.steps must be an integer in [0, 256] (0: the model's default), not 8193"
    out = wrapped.predict(None, pd.DataFrame({"image": [png]}), params={"effort": 4})
    assert out["error"][0] == "params.effort must be an integer in [0, 3] (0: off), not 4"
    refined = wrapped.predict(None, pd.DataFrame({"image": [png]}), params={"effort": 1})
    assert refined["error"][0] is None and refined["reconstruction"][0]  # the refined file decodes
    out = wrapped.predict(None, pd.DataFrame({"cdc": [crafted(model, steps=999)]}))
    assert "header asks for 999 DDIM steps, over the limit of 256" in out["error"][0]
    out = wrapped.predict(None, pd.DataFrame({"cdc": [crafted(model, height=16384, width=16384)]}))
    assert "over the limit of 67108864" in out["error"][0]
    # a thin image is tiled as `cdc compress --tile auto` tiles it, not coded whole
    from cdc.coding.bitstream import Bitstream

    thin = wrapped.predict(None, pd.DataFrame({"image": [_file(np.full((2, 60000, 3), 90, np.uint8))]}),
                           params={"steps": 1})  # the tiling is under test, not the decode
    assert thin["error"][0] is None and Bitstream.from_bytes(thin["cdc"][0]).tile > 0
    # an allocation the machine cannot make is that row's error
    real = wrapped.coder.encode
    monkeypatch.setattr(wrapped.coder, "encode", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 2700000000 bytes")))
    out = wrapped.predict(None, pd.DataFrame({"image": [png]}))
    assert out["error"][0].startswith("out of memory coding this image (DefaultCPUAllocator")
    monkeypatch.setattr(wrapped.coder, "encode", real)


def test_work_stops_when_the_request_times_out(pyfunc, monkeypatch):
    _, wrapped = pyfunc
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "1")
    png = _file(photo("coffee", (128, 128)))
    start = time.monotonic()
    out = wrapped.predict(None, pd.DataFrame({"image": [png] * 6}), params={"steps": 256})
    assert time.monotonic() - start < 20  # 6 rows of 256 steps would take far longer
    assert "over the server's request timeout of 1 s" in out["error"][0]
    assert all("request timeout" in e for e in out["error"])


# ---------------------------------------------------------------------------------------- over HTTP
@pytest.fixture(scope="module")
def served(pyfunc, tmp_path_factory):
    """``cdc serve -m models:/cdc-x-rho0@q1`` of a model in the project's (temporary) registry."""
    model, _ = pyfunc
    home = tmp_path_factory.mktemp("home")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "CDC_HOME": str(home / ".cdc"),
           "CDC_MODEL_CACHE": str(home / "cache"), "PYTHONPATH": str(REPO / "tests")}
    register = ("import mlflow; from cdc.registry.catalog import register; "
                "from cdc.registry.tracking import setup_mlflow;"
                f"setup_mlflow('serve');\nwith mlflow.start_run(): register({str(model)!r}, "
                "{'shards': {'bpp': 0.3, 'psnr-rgb': 20.0}}, 'shards', 'key', 3)")
    subprocess.run([sys.executable, "-c", register], env=env, cwd=home, check=True, capture_output=True, timeout=300)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cdc", "serve", "-m", "models:/cdc-x-rho0@q1", "-p", str(port),
                               "--timeout", "10"], cwd=home, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        assert server.poll() is None, server.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "cdc serve did not answer /ping within 300 s"
        try:
            if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(1)
    yield SimpleNamespace(url=url, server=server, home=home, model=model)
    server.send_signal(signal.SIGHUP)  # the terminal closed: the server stops, cleanly
    assert server.wait(timeout=60) == 0, server.stdout.read()[-3000:]


def _post(url: str, body, content_type: str = "application/json") -> requests.Response:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return requests.post(f"{url}/invocations", data=data, headers={"Content-Type": content_type}, timeout=120)


@pytest.mark.slow
def test_served_from_the_project_registry_every_json_form_keeps_its_rows(served, tmp_path):
    png = _b64(_file(photo("coffee", (64, 96))))
    r = _post(served.url, {"dataframe_records": [{"image": png}]})
    assert r.status_code == 200, r.text[:2000]
    first = r.json()["predictions"][0]
    cdc = base64.b64decode(first["cdc"])
    (tmp_path / "a.cdc").write_bytes(cdc)  # a real .cdc file: the CLI decodes it to the same pixels
    decoded = run_cli("decompress", tmp_path / "a.cdc", "-m", served.model, "-o", tmp_path / "a.png")
    assert decoded.returncode == 0, decoded.stderr
    reconstruction = _pixels(base64.b64decode(first["reconstruction"]))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), reconstruction)
    mixed = [{"image": png}, {"cdc": first["cdc"]}, {"img": png}]
    for form in ({"instances": mixed}, {"inputs": mixed}, {"dataframe_records": mixed}):
        r = _post(served.url, form)
        assert r.status_code == 200, r.text[:2000]
        answers = r.json()["predictions"]
        assert [a["error"] for a in answers] == [None, None, "unknown key 'img' (a row has 'image' or 'cdc')"]
        assert answers[1]["reconstruction"] == first["reconstruction"]
    r = _post(served.url, {"inputs": {"image": [png]}, "params": {"steps": 2}})
    assert r.status_code == 200 and r.json()["predictions"][0]["cdc"] != first["cdc"]  # 2 steps in the file
    assert not (served.home / "mlflow.db").exists()  # the project's registry, no stray store


@pytest.mark.slow
def test_hostile_bodies_get_one_line_and_no_stack_trace(served):
    bodies = [("[" * 100000 + "]" * 100000, "application/json"), ("image\nabc", "text/csv"),
              (b"PAR1" + b"x" * 11, "application/vnd.apache.parquet"), ("{", "application/json"),
              ({"dataframe_split": 3}, "application/json")]
    for body, content_type in bodies:
        r = _post(served.url, body, content_type)
        assert r.status_code in (200, 400), (body[:20], r.status_code, r.text[:300])
        assert "Traceback" not in r.text and "stack_trace" not in r.text and 'File "' not in r.text
        if r.status_code == 400:
            assert set(r.json()) == {"error_code", "message"} and "\n" not in r.json()["message"]


@pytest.mark.slow
def test_a_timed_out_request_stops_its_work(served):
    """The client gets 504 at the server's timeout (10 s here); the server's CPU then goes quiet."""
    import psutil

    png = _b64(_file(photo("coffee", (256, 256))))
    start = time.monotonic()
    r = _post(served.url, {"dataframe_records": [{"image": png}] * 4, "params": {"steps": 256}})
    assert r.status_code == 504 and time.monotonic() - start < 30
    server = psutil.Process(served.server.pid)
    time.sleep(3)  # the running denoising step ends
    before = sum(server.cpu_times()[:2])
    time.sleep(3)
    assert sum(server.cpu_times()[:2]) - before < 1.0  # idle: no work left for a client that has gone
    assert requests.get(f"{served.url}/ping", timeout=5).status_code == 200


@pytest.mark.slow
def test_the_server_fails_fast_and_leaves_nothing_behind(served, tmp_path):
    port = served.url.rsplit(":", 1)[1]
    start = time.monotonic()
    taken = run_cli("serve", "-m", served.model, "-p", port, timeout=120)
    assert taken.returncode == 1 and f"cdc: error: port {port} on 127.0.0.1: already in use" in taken.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    (broken / "model.safetensors").write_bytes(b"")
    bad = run_cli("serve", "-m", broken, "-p", str(free_port()), timeout=120)
    assert bad.returncode == 1 and f"cdc: error: {broken / 'config.json'}: broken checkpoint config" in bad.stderr
    assert "Traceback" not in taken.stderr + bad.stderr and "serving" not in taken.stdout + bad.stdout
    assert time.monotonic() - start < 120
    # kill -9 of the command with two workers: the workers go with it, the port is free again
    import psutil

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cdc", "serve", "-m", str(served.model), "-p", str(port),
                               "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "TMPDIR": str(tmp_path)})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(1)
    workers = psutil.Process(server.pid).children(recursive=True)
    assert workers
    server.kill()
    server.wait()
    psutil.wait_procs(workers, timeout=30)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/ping", timeout=5)
    assert not list(Path(tmp_path).glob("cdc-serve-*"))  # the served model's folder went when it was loaded
