"""The MLflow pyfunc flavour of a CDC codec: photos in, ``.cdc`` files out, and back.

Each input row is one request: ``image`` (the bytes of a PNG/JPEG/WebP/PPM/... file) is
compressed, ``cdc`` (the bytes of a ``.cdc`` file) is decoded; a row gives one, not both. The answer
has exactly one row per request row, in order: the ``.cdc`` file, its real bpp (bits per pixel),
the reconstruction as PNG bytes and its size, the conversions applied to the image (``warnings``:
CMYK, 16-bit, alpha, frames), or ``error`` (one line) for a row that could not be coded; the other
rows are unaffected.

    model = mlflow.pyfunc.load_model("models:/cdc-x-rho0.9@q2")
    out = model.predict(pd.DataFrame({"image": [png_bytes, jpeg_bytes]}), params={"steps": 17})
    out["cdc"][0], out["bpp"][0], out["reconstruction"][0]      # bytes, float, PNG bytes

Served (``cdc serve`` or ``mlflow models serve``), files travel base64-encoded in JSON; post a file
rather than putting a photo on the command line::

    printf '{"dataframe_records": [{"image": "%s"}]}' "$(base64 -w0 photo.png)" > request.json
    curl -s localhost:5001/invocations -H 'Content-Type: application/json' -d @request.json

``dataframe_records`` and ``dataframe_split`` keep every row as sent. In ``instances`` and
``inputs``, MLflow's own server turns a list of rows into columns, which loses rows that differ in
their keys; ``cdc serve`` keeps them. A bare value (``{"inputs": ["<base64>"]}``) is a file: a
``.cdc`` file (by its magic bytes) is decoded, anything else compressed.

Every request is bounded by the limits of ``cdc.limits`` (the service's pixel limit, the DDIM
steps a file or ``params.steps`` may ask for, whole-image pixels: large images are tiled as ``cdc
compress --tile auto`` does, encoder effort ``params.effort`` up to ``cdc.limits.MAX_EFFORT``; a
variable-rate model's ``params.quality`` or target ``params.bpp``, as ``cdc compress`` takes them),
and by the server's request timeout: work on rows the client will not
receive stops when it expires. The codec checkpoint travels as the artifact ``checkpoint``
(safetensors + JSON), so consumers need ``cdc-pipeline`` installed but no training code. The model
is logged *from code* (``cdc/registry/pyfunc_model.py``), never as a CloudPickle.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

SIGNATURE = ModelSignature(
    # No input schema: MLflow would drop unknown columns and fail whole batches on a null or
    # mixed column before the rows reach the model; the model checks every row itself.
    inputs=None,
    outputs=Schema([ColSpec("binary", "cdc"), ColSpec("double", "bpp"), ColSpec("binary", "reconstruction"),
                    ColSpec("long", "height"), ColSpec("long", "width"), ColSpec("string", "warnings"),
                    ColSpec("string", "error")]),
    params=ParamSchema([ParamSpec("steps", "long", 0), ParamSpec("effort", "long", 0),
                        ParamSpec("quality", "double", -1.0), ParamSpec("bpp", "double", 0.0)]),
)
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
COLUMNS = ("cdc", "bpp", "reconstruction", "height", "width", "warnings", "error")
KEYS = ("image", "cdc")
MAX_PIXELS_ENV = "CDC_SERVE_MAX_PIXELS"
"""Environment variable: the served model's pixel limit (default ``cdc.limits.SERVICE_MAX_PIXELS``)."""
TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
"""Set by MLflow's scoring server (and ``cdc serve``): seconds before a request is answered 504."""


def input_example() -> pd.DataFrame:
    """One 64 x 64 RGB gradient as PNG bytes: the smallest image every preset codes (latent 4 x 4)."""
    from PIL import Image

    ramp = np.linspace(0, 255, 64, dtype=np.float64)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return pd.DataFrame({"image": [buf.getvalue()]})


class RowError(Exception):
    """One request row that cannot be coded (the message is its ``error``). Not a ``ValueError``:
    the coder's own error handling must let it through."""


class Expired(RowError):
    """The request's time is up: its client has been answered (504) and will not read this row."""


def _as_bytes(key: str, value) -> bytes:
    """A request cell as file bytes: raw bytes as they are, text as base64 (JSON carries files so)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, np.ndarray) and value.ndim == 0:  # MLflow's numpy forms of one value
        value = value.item()
    if isinstance(value, str):
        try:
            return base64.b64decode("".join(value.split()), validate=True)  # MLflow's encoder wraps lines
        except (binascii.Error, ValueError):
            raise RowError(f"{key}: not base64 text (a file travels base64-encoded in JSON)") from None
    raise RowError(f"{key}: expected base64 text or file bytes, not {type(value).__name__}")


def _present(value) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and np.isnan(value):
        return False
    return not (isinstance(value, np.ndarray) and value.ndim == 0 and value.item() is None)


def _bare(value) -> dict:
    """A bare value (no column name): a ``.cdc`` file by its magic bytes, else an image file."""
    from cdc.coding.bitstream import MAGIC

    data = _as_bytes("file", value)
    return {"cdc": data} if data.startswith(MAGIC) else {"image": data}


def _records(model_input) -> list[dict | RowError]:
    """The request rows of ``model_input`` (a DataFrame, a dict of columns, a list of rows or of bare
    values), one per row, in order: each a row's present cells, or the error of a row that has none."""
    if isinstance(model_input, pd.DataFrame):
        return [{k: v for k, v in row.items() if _present(v)} for row in model_input.to_dict("records")]
    if isinstance(model_input, dict):  # columns (MLflow's instances/inputs forms)
        columns = {k: list(np.atleast_1d(np.asarray(v, dtype=object))) for k, v in model_input.items()}
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            return [RowError("the request's columns have different lengths (rows with different keys): "
                             "send them as dataframe_records")]
        rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
        return [{k: v for k, v in row.items() if _present(v)} for row in rows]
    if isinstance(model_input, np.ndarray | list | tuple):
        out: list[dict | RowError] = []
        for item in model_input:
            if isinstance(item, dict):
                out.append({k: v for k, v in item.items() if _present(v)})
            else:
                try:
                    out.append(_bare(item))
                except RowError as exc:
                    out.append(exc)
        return out
    return [RowError(f"unsupported request of type {type(model_input).__name__}")]


def _request(row: dict | RowError) -> tuple[str, bytes]:
    """``("image", file bytes)`` or ``("cdc", file bytes)`` of a request row; raises ``RowError``."""
    if isinstance(row, RowError):
        raise row
    unknown = sorted(set(row) - set(KEYS))
    if unknown:
        raise RowError(f"unknown key {', '.join(map(repr, unknown))} (a row has 'image' or 'cdc')")
    given = [k for k in KEYS if k in row]
    if not given:
        raise RowError("a row needs an 'image' (file bytes) or a 'cdc' (a .cdc file)")
    if len(given) > 1:
        raise RowError("give 'image' or 'cdc' in a row, not both")
    return given[0], _as_bytes(given[0], row[given[0]])


class CDCPyfunc(mlflow.pyfunc.PythonModel):
    """Compress images and decode ``.cdc`` files through the real bitstream (``steps=0``: the
    model's default number of DDIM steps; at most ``cdc.limits.MAX_DECODE_STEPS``)."""

    # MLflow would wrap ``predict`` to convert and validate the input by its type hints (and warns
    # without them); this model checks every row itself (``_records``)
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from cdc.coding.coder import Coder
        from cdc.limits import DEFAULT_LIMITS, SERVICE_MAX_PIXELS
        from cdc.zoo.checkpoint import load_codec

        pixels = int(os.environ.get(MAX_PIXELS_ENV) or SERVICE_MAX_PIXELS)
        self.coder = Coder(load_codec(context.artifacts["checkpoint"]), DEFAULT_LIMITS.with_(max_pixels=pixels))

    def predict(self, context, model_input, params: dict[str, int] | None = None) -> pd.DataFrame:
        """One output row per request row, in order (see the module docstring); pixels are uint8."""
        from cdc.limits import MAX_DECODE_STEPS, MAX_EFFORT

        timeout = float(os.environ.get(TIMEOUT_ENV) or 0)
        deadline = time.monotonic() + timeout if timeout > 0 else None
        steps = (params or {}).get("steps") or 0
        effort = (params or {}).get("effort") or 0
        rate = _rate(params or {})
        out = []
        for row in _records(model_input):
            if not (isinstance(steps, int | np.integer) and 0 <= steps <= MAX_DECODE_STEPS):
                out.append({"error": f"params.steps must be an integer in [0, {MAX_DECODE_STEPS}] (0: the "
                                     f"model's default), not {steps!r}"})
                continue
            if not (isinstance(effort, int | np.integer) and 0 <= effort <= MAX_EFFORT):
                out.append({"error": f"params.effort must be an integer in [0, {MAX_EFFORT}] (0: off), "
                                     f"not {effort!r}"})
                continue
            if isinstance(rate, str):
                out.append({"error": rate})
                continue
            try:
                if deadline is not None and time.monotonic() > deadline:
                    raise Expired(f"not started within the server's request timeout of {timeout:g} s")
                out.append(self._one(*_request(row), int(steps) or None, int(effort), deadline, timeout, rate))
            except RowError as exc:
                out.append({"error": str(exc)})
        return pd.DataFrame([[row.get(c) for c in COLUMNS] for row in out], columns=list(COLUMNS), dtype=object)

    def _one(self, key: str, data: bytes, steps: int | None, effort: int, deadline: float | None,
             timeout: float, rate: dict[str, float]) -> dict:
        from cdc.coding.coder import DecodeError
        from cdc.images import InputError, encode_png, image_from_bytes

        def on_step(_: int) -> None:
            if deadline is not None and time.monotonic() > deadline:
                raise Expired(f"stopped: over the server's request timeout of {timeout:g} s")

        notes: list[str] = []
        try:
            if key == "image":
                x, notes = image_from_bytes(data, "image", self.coder.limits.max_pixels, uint8=True)
                data = self.coder.encode(x, steps=steps, tile="auto", effort=effort, **rate).data
                del x
            rec, stream = self.coder.decode_uint8(data, steps=steps, progress=on_step)
        except (DecodeError, InputError) as exc:
            raise RowError(str(exc).splitlines()[0] or exc.__class__.__name__) from None
        except (MemoryError, RuntimeError) as exc:  # an allocation the machine cannot make
            first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise RowError(f"out of memory coding this {key} ({first[:200]})") from None
        bpp = 8 * len(data) / (stream.height * stream.width)
        return {"cdc": data, "bpp": bpp, "reconstruction": encode_png(rec),
                "height": stream.height, "width": stream.width, "warnings": "; ".join(notes) or None, "error": None}


def _rate(params: dict) -> dict[str, float] | str:
    """A variable-rate model's ``params.quality`` (0-100; < 0: its default) and ``params.bpp`` (a target
    rate; <= 0: none) as ``Coder.encode`` keywords, or the error line of a value that is not a number."""
    out = {}
    for name, off in (("quality", lambda v: v < 0), ("bpp", lambda v: v <= 0)):
        value = params.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
                or not np.isfinite(value):
            return f"params.{name} must be a number, not {value!r}"
        if not off(value):
            out[name] = float(value)
    return out


def requirements() -> list[str]:
    """The logged model's pip requirements: the ``cdc-pipeline`` release that wrote it, which pins
    the codec's own dependencies (MLflow adds ``mlflow`` itself). Given rather than left to MLflow,
    whose inference loads the model in a subprocess to arrive at the same list: about 12 s a model
    on 2 cores."""
    from cdc import __version__

    return [f"cdc-pipeline=={__version__}"]


def stage_checkpoint(checkpoint: str | Path, folder: Path) -> Path:
    """The codec checkpoint alone, in ``folder``, as the pyfunc artifact: a training directory also
    holds optimizer states and samples that a served model does not need."""
    import shutil

    from cdc.zoo.checkpoint import CONFIG_NAME, WEIGHTS_NAME

    checkpoint = Path(checkpoint)
    if checkpoint.is_file():  # a single .safetensors file (a shipped model) is the whole checkpoint
        return Path(shutil.copy2(checkpoint, folder / checkpoint.name))
    staged = folder / "checkpoint"
    staged.mkdir()
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        shutil.copy2(checkpoint / name, staged / name)
    return staged


def save_pyfunc(checkpoint: str | Path, path: str | Path) -> Path:
    """Write a local ``checkpoint`` (directory or ``.safetensors`` file) as a pyfunc model directory
    at ``path`` (must not exist), ready for ``mlflow models serve -m PATH``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.pyfunc.save_model(str(path), python_model=str(MODEL_CODE),
                                 artifacts={"checkpoint": str(stage_checkpoint(checkpoint, Path(tmp)))},
                                 signature=SIGNATURE, input_example=input_example())
    return Path(path)
