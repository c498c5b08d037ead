"""Frozen perceptual distances for the training loss: LPIPS and shift-tolerant LPIPS.

* ``lpips-vgg`` / ``lpips-alex`` — LPIPS (Zhang et al., CVPR 2018), the ``lpips`` package; its
  linear heads ship in the wheel, the backbone is torchvision's ImageNet model, which must be
  present in the torch hub cache (it cannot be downloaded on offline machines).
* ``stlpips-vgg`` / ``stlpips-alex`` — shift-tolerant LPIPS (Ghildyal & Liu, ECCV 2022), the
  ``stlpips-pytorch`` wheel, which ships the full network weights (works offline).

Missing weights are an explicit ``MissingWeightsError`` naming the file to provide; a random
backbone exists only behind ``random_backbone=True`` (tests).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import torch
from torch import Tensor, nn

TORCHVISION_BACKBONES = {
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
}


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights needed by a perceptual network are not on this machine."""


def torchvision_weights_path(net: str) -> Path:
    """Where torchvision looks for the ImageNet backbone of ``net`` (``vgg`` or ``alex``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_BACKBONES[net][0]


def require_torchvision_weights(net: str) -> Path:
    """Return the backbone file for ``net`` or raise ``MissingWeightsError`` saying how to get it."""
    path = torchvision_weights_path(net)
    if not path.is_file():
        url = TORCHVISION_BACKBONES[net][1]
        raise MissingWeightsError(
            f"LPIPS-{net} needs torchvision's ImageNet weights at {path} (not found; this machine cannot "
            f"download them). Fetch {url} to that path, or set TORCH_HOME to a cache holding it, "
            f"or use an stlpips-* network, which ships its weights."
        )
    return path


class PerceptualDistance(nn.Module):
    """A frozen, eval-mode perceptual distance ``d(a, b)`` per sample.

    Inputs are (B, 3, H, W) in [-1, 1]; the output has shape (B,), 0 for identical images.
    Its parameters never require gradients (gradients still flow to the inputs) and it is
    never part of a codec checkpoint.

    Attributes:
        name: e.g. ``stlpips-vgg``.
        pretrained: False only for the explicit random-backbone test setting.
    """

    def __init__(self, name: str, net: nn.Module, pretrained: bool) -> None:
        super().__init__()
        self.name, self.net, self.pretrained = name, net, pretrained
        self.net.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualDistance:
        # Always eval: dropout in the LPIPS heads would make the loss noisy and irreproducible.
        return super().train(False)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.net(a.float(), b.float()).reshape(a.shape[0])

    def features(self, x: Tensor) -> list[Tensor]:
        """The unit-normalised backbone features of ``x`` ((B, 3, H, W) in [-1, 1]), one tensor per layer.

        With ``distance_from_features`` this is ``forward`` split in two, so that an image compared
        with many others (one reference, every quality of a codec) passes the backbone once.
        """
        net = self.net
        x = net.scaling_layer(x.float()) if net.version == "0.1" else x.float()
        # the packages' normalize_tensor, written out so that both packages share one path
        return [f / (torch.sqrt(torch.sum(f**2, dim=1, keepdim=True)) + 1e-10) for f in net.net(x)]

    def distance_from_features(self, fa: list[Tensor], fb: list[Tensor]) -> Tensor:
        """``d`` from two ``features`` lists (batch sizes broadcast: 1 reference vs B images) -> (B,)."""
        layers = zip(self.net.lins, fa, fb, strict=True)
        total = sum(lin((a - b) ** 2).mean(dim=(2, 3), keepdim=True) for lin, a, b in layers)
        return total.reshape(-1)


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def build_perceptual(name: str, random_backbone: bool = False) -> PerceptualDistance:
    """Build the perceptual distance ``name`` (see module docstring).

    Raises:
        MissingWeightsError: pretrained weights are absent and ``random_backbone`` is False.
    """
    family, _, net = name.partition("-")
    if net not in TORCHVISION_BACKBONES:
        raise ValueError(f"unknown perceptual network {name!r}")
    if family == "lpips":
        import lpips

        if not random_backbone:
            require_torchvision_weights(net)
        with _quiet():
            model = lpips.LPIPS(net=net, pnet_rand=random_backbone, verbose=False)
    elif family == "stlpips":
        from stlpips_pytorch import stlpips

        with _quiet():
            model = stlpips.LPIPS(net=net, variant="shift_tolerant", pretrained=False, verbose=False)
        if not random_backbone:
            _load_stlpips_weights(model, net)
    else:
        raise ValueError(f"unknown perceptual network {name!r}")
    return PerceptualDistance(name, model, pretrained=not random_backbone)


def _load_stlpips_weights(model: nn.Module, net: str) -> None:
    from stlpips_pytorch import stlpips

    path = Path(os.path.dirname(stlpips.__file__)) / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"
    if not path.is_file():
        raise MissingWeightsError(f"ST-LPIPS-{net} weights {path} are missing (reinstall stlpips-pytorch)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    # The package loads with strict=False; check every tensor is covered so a renamed key can
    # never leave a silently random layer behind.
    expected = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    missing = sorted(expected - set(state))
    if missing:
        raise MissingWeightsError(f"{path} lacks weights for {', '.join(missing[:5])}")
    model.load_state_dict(state, strict=False)
