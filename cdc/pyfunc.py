"""The MLflow pyfunc flavour of a CDC codec: an image array in, its reconstruction and real bpp out.

    model = mlflow.pyfunc.load_model("models:/cdc-x-rho0.9@q2")
    out = model.predict(image_uint8_hwc)            # params={"steps": 17} to change the DDIM steps
    out["reconstruction"], out["bpp"]

The codec checkpoint travels as the artifact ``checkpoint`` (safetensors + JSON), so consumers need
``cdc-pipeline`` installed but no training code. The model is logged *from code*
(``cdc/pyfunc_model.py``), never as a CloudPickle, with the signature below and a small input
example.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, 3), "image")]),
    outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, 3), "reconstruction"),
                    TensorSpec(np.dtype(np.float64), (-1,), "bpp")]),
    params=ParamSchema([ParamSpec("steps", "long", 0)]),
)


MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


def input_example() -> np.ndarray:
    """A 64 x 64 RGB uint8 gradient: the smallest image every preset codes (one latent 4 x 4)."""
    ramp = np.linspace(0, 255, 64, dtype=np.float64)
    return np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), -1).astype(np.uint8)


class CDCPyfunc(mlflow.pyfunc.PythonModel):
    """Compress and decompress through the real bitstream (``steps=0``: the model's default)."""

    def load_context(self, context) -> None:
        from cdc.checkpoint import load_codec
        from cdc.coder import Coder

        self.coder = Coder(load_codec(context.artifacts["checkpoint"]))

    def predict(self, context, model_input, params: dict | None = None) -> dict:
        from cdc.images import from_uint8, to_uint8

        image = np.asarray(model_input["image"] if isinstance(model_input, dict) else model_input, dtype=np.uint8)
        x = from_uint8(image)
        steps = int((params or {}).get("steps") or 0) or None
        encoded = self.coder.encode(x, steps=steps)
        x_hat, _ = self.coder.decode(encoded.data)
        return {"reconstruction": to_uint8(x_hat), "bpp": np.array([encoded.bpp])}
