"""cdc: lossy image compression with conditional diffusion models (Yang & Mandt, NeurIPS 2023).

Public API::

    from cdc import load_codec, Coder
    coder = Coder(load_codec("model/"))
    encoded = coder.encode(x)            # x: (1, 3, H, W) in [0, 1]
    x_hat, header = coder.decode(encoded.data)

Attributes are imported lazily so that light commands (``cdc info``) do not load PyTorch.
"""

import warnings
from importlib import import_module
from typing import Any

# compressai imports torch_geometric, whose module bodies call torch.jit.script (deprecated since
# torch 2.14): one FutureWarning per process that says nothing about the user's work. Only it.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning,
                        module=r"torch\.jit\._script")

__version__ = "0.1.0"

_EXPORTS = {
    "CDCCodec": "cdc.models.codec",
    "Coder": "cdc.coding.coder",
    "Config": "cdc.config",
    "load_codec": "cdc.zoo.checkpoint",
    "load_config": "cdc.config",
    "save_codec": "cdc.zoo.checkpoint",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cdc' has no attribute {name!r}")
