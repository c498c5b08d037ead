"""Image-quality metrics on 8-bit images, and the HiFiC patch protocol for FID/KID.

Per image pair (``ref``, ``rec``: H x W x 3 uint8):

* ``psnr-rgb`` (dB) and ``ms-ssim-rgb`` (pytorch-msssim, data range 255; needs both sides > 160 px);
* ``stlpips-alex`` / ``stlpips-vgg`` (shift-tolerant LPIPS, weights ship with the package);
* ``lpips-alex`` / ``lpips-vgg`` and ``dists`` — only where torchvision's ImageNet backbones are in
  the torch hub cache; otherwise listed as unavailable with the file they need.

Over a whole dataset (distribution metrics) on 256 x 256 patches cut as in HiFiC (Mentzer et al.
2020): a non-overlapping grid, plus a second grid shifted by 128 px:

* ``fid`` / ``kid`` (torchmetrics, torch-fidelity's Inception) where its weights are present;
* ``fd-stlpips-vgg``: a Fréchet distance between ST-LPIPS-VGG features (spatially averaged, 1472-d),
  always available. It is *not* FID and is never reported as such.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from cdc.perceptual import MissingWeightsError, build_perceptual, torchvision_weights_path

PATCH = 256
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def psnr(ref: np.ndarray, rec: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (inf when identical)."""
    mse = np.mean((ref.astype(np.float64) - rec.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _tensor(img: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """H x W x 3 uint8 -> (1, 3, H, W) float in [0, 1]."""
    # A copy: decoded images can be read-only views of Pillow's buffer, which torch refuses to wrap.
    return torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1)[None].float().div(255).to(device)


def ms_ssim(ref: np.ndarray, rec: np.ndarray) -> float | None:
    """MS-SSIM (5 scales) on the 8-bit values; None when a side is <= 160 px (too small for 5 scales)."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    if min(ref.shape[:2]) <= 160:
        return None
    return float(_ms_ssim(_tensor(ref) * 255, _tensor(rec) * 255, data_range=255))


def patch_count(height: int, width: int, size: int = PATCH) -> int:
    """HiFiC patch count: floor(W/s) floor(H/s) + floor((W-s/2)/s) floor((H-s/2)/s)."""
    half = size // 2
    shifted = ((width - half) // size) * ((height - half) // size) if min(height, width) >= size + half else 0
    return (width // size) * (height // size) + shifted


def hific_patches(img: torch.Tensor, size: int = PATCH) -> torch.Tensor:
    """(1, 3, H, W) -> (N, 3, size, size): the grid at (0, 0) and, where it fits, the grid at (size/2, size/2)."""
    def grid(x: torch.Tensor) -> torch.Tensor:
        h, w = (x.shape[-2] // size) * size, (x.shape[-1] // size) * size
        if h == 0 or w == 0:
            return x.new_zeros(0, 3, size, size)
        tiles = x[..., :h, :w].unfold(2, size, size).unfold(3, size, size)  # 1,3,nh,nw,s,s
        return tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, size, size)

    out = [grid(img)]
    if min(img.shape[-2:]) >= size + size // 2:
        out.append(grid(img[..., size // 2 :, size // 2 :]))
    return torch.cat(out)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (Na x D) and ``b`` (Nb x D).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr(sqrt(S_a S_b))``. With fewer samples than
    dimensions, ``tr(sqrt(S_a S_b))`` is the nuclear norm of ``A B^T / sqrt((Na-1)(Nb-1))`` for the
    centred features A, B (same non-zero spectrum), which avoids a D x D matrix square root.
    """
    mu1, mu2 = a.mean(0), b.mean(0)
    ca, cb = a - mu1, b - mu2
    na, nb = len(a) - 1, len(b) - 1
    trace_a, trace_b = float(np.sum(ca * ca)) / na, float(np.sum(cb * cb)) / nb
    if max(len(a), len(b)) < a.shape[1]:
        cross = float(np.linalg.svd(ca @ cb.T / np.sqrt(na * nb), compute_uv=False).sum())
    else:
        covmean = linalg.sqrtm((ca.T @ ca / na) @ (cb.T @ cb / nb))
        cross = float(np.trace(covmean.real))
    return max(float(np.sum((mu1 - mu2) ** 2)) + trace_a + trace_b - 2 * cross, 0.0)


class MetricSuite:
    """Every metric this machine can compute; ``unavailable`` maps the others to the file they need.

    Args:
        device: where the networks run.
        distribution: also accumulate patches for FID / KID / fd-stlpips-vgg.
    """

    def __init__(self, device: str | torch.device = "cpu", distribution: bool = True) -> None:
        self.device = torch.device(device)
        self.unavailable: dict[str, str] = {}
        self.distances = {name: build_perceptual(name).to(self.device) for name in ("stlpips-alex", "stlpips-vgg")}
        for name in ("lpips-alex", "lpips-vgg"):
            try:
                self.distances[name] = build_perceptual(name).to(self.device)
            except MissingWeightsError:
                self.unavailable[name] = f"needs {torchvision_weights_path(name.split('-')[1])}"
        self.dists = None
        if torchvision_weights_path("vgg").is_file():
            from torchmetrics.image.dists import DeepImageStructureAndTextureSimilarity

            self.dists = DeepImageStructureAndTextureSimilarity().to(self.device)
        else:
            self.unavailable["dists"] = f"needs {torchvision_weights_path('vgg')}"
        self.distribution = distribution
        self.inception = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        if distribution and not self.inception.is_file():
            self.unavailable["fid"] = self.unavailable["kid"] = f"needs {self.inception}"
        self._ref_features: dict[str, np.ndarray] = {}
        self._reset_distribution()

    def _reset_distribution(self) -> None:
        """Running state of the distribution metrics: features only, never the patches themselves."""
        self._features: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        self.fid = self.kid = None
        if self.distribution and self.inception.is_file():
            from torchmetrics.image.fid import FrechetInceptionDistance
            from torchmetrics.image.kid import KernelInceptionDistance

            self.fid = FrechetInceptionDistance(normalize=True).to(self.device)
            self.kid = KernelInceptionDistance(subset_size=50, normalize=True).to(self.device)

    @torch.no_grad()
    def pair(self, ref: np.ndarray, rec: np.ndarray) -> dict[str, float]:
        """Per-image metrics of two H x W x 3 uint8 images (``ms-ssim-rgb`` absent below 161 px)."""
        out = {"psnr-rgb": psnr(ref, rec)}
        value = ms_ssim(ref, rec)
        if value is not None:
            out["ms-ssim-rgb"] = value
        a, b = _tensor(ref, self.device), _tensor(rec, self.device)
        for name, net in self.distances.items():
            out[name] = float(net(a * 2 - 1, b * 2 - 1))
        if self.dists is not None:
            out["dists"] = float(self.dists(a, b))
        if self.distribution:
            self._add_patches(ref, hific_patches(a), hific_patches(b))
        return out

    @torch.no_grad()
    def _add_patches(self, ref: np.ndarray, refs: torch.Tensor, recs: torch.Tensor, batch: int = 32) -> None:
        # every point of a curve sees the same references: compute their features once
        key = hashlib.sha1(ref.tobytes()).hexdigest()
        if key not in self._ref_features:
            self._ref_features[key] = np.concatenate([self._stlpips_features(refs[i : i + batch])
                                                      for i in range(0, len(refs), batch)])
        self._features[0].append(self._ref_features[key])
        for i in range(0, len(refs), batch):
            r, x = refs[i : i + batch], recs[i : i + batch]
            self._features[1].append(self._stlpips_features(x))
            for metric in (self.fid, self.kid):
                if metric is not None:
                    metric.update(r, real=True)
                    metric.update(x, real=False)

    @torch.no_grad()
    def _stlpips_features(self, x: torch.Tensor) -> np.ndarray:
        net = self.distances["stlpips-vgg"].net
        feats = net.net(net.scaling_layer(x.to(self.device) * 2 - 1))
        return torch.cat([f.mean(dim=(2, 3)) for f in feats], dim=1).cpu().double().numpy()

    def distribution_metrics(self) -> dict[str, float]:
        """FID / KID / fd-stlpips-vgg over the patches of every pair since the last call, then reset."""
        refs, recs = (np.concatenate(f) if f else np.zeros((0, 1472)) for f in self._features)
        out: dict[str, float] = {"patches": float(len(refs))}
        if len(refs) >= 2:
            out["fd-stlpips-vgg"] = frechet_distance(refs, recs)
            if self.fid is not None:
                out["fid"] = float(self.fid.compute())
                self.kid.subset_size = min(self.kid.subset_size, len(refs))
                out["kid"] = float(self.kid.compute()[0])
        self._reset_distribution()
        return out
