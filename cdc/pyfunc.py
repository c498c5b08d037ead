"""The MLflow pyfunc flavour of a CDC codec: photos in, ``.cdc`` files out, and back.

Each row of the input is one request: ``image`` (the bytes of a PNG/JPEG/WebP file) is compressed,
``cdc`` (the bytes of a ``.cdc`` file) is decoded. Each output row carries the ``.cdc`` file, its real
bpp (bits per pixel), the reconstruction as PNG bytes and its size, or ``error`` (one line) for a row
that could not be coded; the other rows are unaffected.

    model = mlflow.pyfunc.load_model("models:/cdc-x-rho0.9@q2")
    out = model.predict(pd.DataFrame({"image": [png_bytes, jpeg_bytes]}), params={"steps": 17})
    out["cdc"][0], out["bpp"][0], out["reconstruction"][0]      # bytes, float, PNG bytes

Served (``mlflow models serve`` or ``cdc serve``), binary columns travel base64-encoded in JSON::

    curl -s localhost:5001/invocations -H 'Content-Type: application/json' \\
      -d "{\\"dataframe_records\\": [{\\"image\\": \\"$(base64 -w0 photo.png)\\"}]}"

(``instances`` and ``inputs`` are understood too). The codec checkpoint travels as the artifact
``checkpoint`` (safetensors + JSON), so consumers need ``cdc-pipeline`` installed but no training
code. The model is logged *from code* (``cdc/pyfunc_model.py``), never as a CloudPickle.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("binary", "image", required=False), ColSpec("binary", "cdc", required=False)]),
    outputs=Schema([ColSpec("binary", "cdc"), ColSpec("double", "bpp"), ColSpec("binary", "reconstruction"),
                    ColSpec("long", "height"), ColSpec("long", "width"), ColSpec("string", "error")]),
    params=ParamSchema([ParamSpec("steps", "long", 0)]),
)
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
COLUMNS = ("cdc", "bpp", "reconstruction", "height", "width", "error")


def input_example() -> pd.DataFrame:
    """One 64 x 64 RGB gradient as PNG bytes: the smallest image every preset codes (latent 4 x 4)."""
    from PIL import Image

    ramp = np.linspace(0, 255, 64, dtype=np.float64)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return pd.DataFrame({"image": [buf.getvalue()]})


_BASE64 = re.compile(rb"[A-Za-z0-9+/=\s]+")


def _as_bytes(value) -> bytes | None:
    """A request cell as file bytes; None for an empty cell.

    MLflow base64-decodes binary columns of the ``dataframe_*`` JSON forms only: ``instances`` and
    ``inputs`` arrive as the base64 text itself (str, or its UTF-8 bytes). Text made only of the
    base64 alphabet is decoded; a real image or ``.cdc`` file always holds other bytes (its magic
    number starts with one).
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    data = value.encode() if isinstance(value, str) else bytes(value)
    return base64.b64decode(data) if _BASE64.fullmatch(data) else data


def _rows(model_input) -> list[dict]:
    """The requests of ``model_input``: a DataFrame, a dict of columns or a list of rows."""
    if isinstance(model_input, dict):
        model_input = pd.DataFrame({k: list(np.atleast_1d(v)) for k, v in model_input.items()})
    if isinstance(model_input, list):
        model_input = pd.DataFrame(model_input)
    return [{"image": r.get("image"), "cdc": r.get("cdc")} for r in model_input.to_dict("records")]


class CDCPyfunc(mlflow.pyfunc.PythonModel):
    """Compress images and decode ``.cdc`` files through the real bitstream (``steps=0``: the
    model's default number of DDIM steps)."""

    def load_context(self, context) -> None:
        from cdc.checkpoint import load_codec
        from cdc.coder import Coder

        self.coder = Coder(load_codec(context.artifacts["checkpoint"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, int] | None = None) -> pd.DataFrame:
        """One output row per request row (see the module docstring); pixel values are uint8."""
        steps = int((params or {}).get("steps") or 0) or None
        out = [self._one(request, steps) for request in _rows(model_input)]
        return pd.DataFrame([[row.get(c) for c in COLUMNS] for row in out], columns=list(COLUMNS), dtype=object)

    def _one(self, request: dict, steps: int | None) -> dict:
        from cdc.coder import DecodeError
        from cdc.images import encode_png, from_uint8
        from shards.images import decode_image

        try:
            data, image = _as_bytes(request["cdc"]), _as_bytes(request["image"])
            if data is None:
                if image is None:
                    raise ValueError("a row needs an 'image' (file bytes) or a 'cdc' (a .cdc file)")
                pixels = np.asarray(decode_image(image).image, dtype=np.uint8)
                data = self.coder.encode(from_uint8(pixels), steps=steps).data
            rec, stream = self.coder.decode_uint8(data, steps=steps)
        except (DecodeError, ValueError, OSError) as exc:
            return {"error": str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}
        return {"cdc": data, "bpp": 8 * len(data) / (stream.height * stream.width), "reconstruction": encode_png(rec),
                "height": stream.height, "width": stream.width, "error": None}



def stage_checkpoint(checkpoint: str | Path, folder: Path) -> Path:
    """The codec checkpoint alone, in ``folder``, as the pyfunc artifact: a training directory also
    holds optimizer states and samples that a served model does not need."""
    import shutil

    from cdc.checkpoint import CONFIG_NAME, WEIGHTS_NAME

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
