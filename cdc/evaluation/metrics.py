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

from cdc.images import from_uint8
from cdc.models.perceptual import MissingWeightsError, build_perceptual, torchvision_weights_path

PATCH = 256
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def psnr(ref: np.ndarray, rec: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (inf when identical)."""
    mse = np.mean((ref.astype(np.float64) - rec.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ms_ssim(ref: np.ndarray, rec: np.ndarray) -> float | None:
    """MS-SSIM (5 scales) on the 8-bit values; None when a side is <= 160 px (too small for 5 scales)."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    if min(ref.shape[:2]) <= 160:
        return None
    return float(_ms_ssim(from_uint8(ref) * 255, from_uint8(rec) * 255, data_range=255))


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


PER_IMAGE_METRICS = ("psnr-rgb", "ms-ssim-rgb", "stlpips-alex", "stlpips-vgg", "lpips-alex", "lpips-vgg", "dists")
DISTRIBUTION_METRICS = ("fd-stlpips-vgg", "fid", "kid")
ALL_METRICS = PER_IMAGE_METRICS + DISTRIBUTION_METRICS
# Fast enough for a whole dataset on 2 CPU cores; the VGG-based ones cost ~4x AlexNet at full resolution.
DEFAULT_METRICS = ("psnr-rgb", "ms-ssim-rgb", "stlpips-alex")
# What the grid, the study and the model cards report.
REPORT_METRICS = ("psnr-rgb", "ms-ssim-rgb", "stlpips-alex", "stlpips-vgg", "fd-stlpips-vgg")


def parse_metrics(text: str) -> tuple[str, ...]:
    """``default``, ``report``, ``all`` or a comma list of metric names -> the metric names.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    named = {"default": DEFAULT_METRICS, "report": REPORT_METRICS, "all": ALL_METRICS}
    names: list[str] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        if item not in named and item not in ALL_METRICS:
            raise ValueError(f"unknown metric {item!r} (known: {', '.join(ALL_METRICS)}; or default, report, all)")
        names += [n for n in named.get(item, (item,)) if n not in names]
    if not names:
        raise ValueError("no metrics given")
    return tuple(names)


def metric_versions(metrics: tuple[str, ...]) -> dict[str, str]:
    """What a cached value of each metric depends on: the package (and weights) that computes it."""
    from importlib.metadata import version

    def pkg(name: str) -> str:
        return f"{name} {version(name)}"

    by_family = {"psnr": "numpy-float64", "ms-ssim": pkg("pytorch-msssim"), "stlpips": pkg("stlpips-pytorch"),
                 "lpips": pkg("lpips"), "dists": pkg("torchmetrics"), "fid": pkg("torchmetrics"),
                 "kid": pkg("torchmetrics"), "fd": f"{pkg('stlpips-pytorch')} hific{PATCH}"}
    return {m: next(v for family, v in by_family.items() if m.startswith(family)) for m in metrics}


class MetricSuite:
    """The chosen ``metrics`` that this machine can compute; ``unavailable`` maps the others to the file
    they need.

    Args:
        device: where the networks run.
        metrics: names from ``ALL_METRICS`` (default: all of them).
    """

    def __init__(self, device: str | torch.device = "cpu", metrics: tuple[str, ...] = ALL_METRICS) -> None:
        self.device = torch.device(device)
        self.metrics = tuple(metrics)
        self.unavailable: dict[str, str] = {}
        self.distances = {}
        for name in ("stlpips-alex", "stlpips-vgg", "lpips-alex", "lpips-vgg"):
            if name in self.metrics:
                try:
                    self.distances[name] = build_perceptual(name).to(self.device)
                except MissingWeightsError:
                    self.unavailable[name] = f"needs {torchvision_weights_path(name.split('-')[1])}"
        self.dists = None
        if "dists" in self.metrics:
            if torchvision_weights_path("vgg").is_file():
                from torchmetrics.image.dists import DeepImageStructureAndTextureSimilarity

                self.dists = DeepImageStructureAndTextureSimilarity().to(self.device)
            else:
                self.unavailable["dists"] = f"needs {torchvision_weights_path('vgg')}"
        self.distribution = any(m in self.metrics for m in DISTRIBUTION_METRICS)
        self.fd_net = (self.distances.get("stlpips-vgg") or build_perceptual("stlpips-vgg").to(self.device)
                       if "fd-stlpips-vgg" in self.metrics else None)
        self.inception = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        self.inception_ok = self.inception.is_file()
        for name in ("fid", "kid"):
            if name in self.metrics and not self.inception_ok:
                self.unavailable[name] = f"needs {self.inception}"
        self._ref_features: dict[str, np.ndarray] = {}
        self._points: dict[str, dict] = {}

    @property
    def computed(self) -> tuple[str, ...]:
        """The chosen metrics that this machine computes."""
        return tuple(m for m in self.metrics if m not in self.unavailable)

    def pair(self, ref: np.ndarray, rec: np.ndarray, point: str = "") -> dict[str, float]:
        """Per-image metrics of two H x W x 3 uint8 images (``ms-ssim-rgb`` absent below 161 px)."""
        return self.compare(ref, [rec], [point])[0]

    @torch.no_grad()
    def compare(self, ref: np.ndarray, recs: list[np.ndarray], points: list[str] | None = None,
                batch: int = 4) -> list[dict[str, float]]:
        """Per-image metrics of one reference against each of ``recs`` (all H x W x 3 uint8).

        The reference passes every network once and the reconstructions go through in batches of
        ``batch``; ``points[i]`` names the RD point whose distribution metrics ``recs[i]`` joins.
        """
        points = points if points is not None else [""] * len(recs)
        out: list[dict[str, float]] = [{} for _ in recs]
        for row, rec in zip(out, recs, strict=True):
            if "psnr-rgb" in self.metrics:
                row["psnr-rgb"] = psnr(ref, rec)
            value = ms_ssim(ref, rec) if "ms-ssim-rgb" in self.metrics else None
            if value is not None:
                row["ms-ssim-rgb"] = value
        a = from_uint8(ref, self.device)
        for name, net in self.distances.items():
            fa = net.features(a * 2 - 1)
            for i in range(0, len(recs), batch):
                b = torch.cat([from_uint8(r, self.device) for r in recs[i : i + batch]])
                values = net.distance_from_features(fa, net.features(b * 2 - 1))
                for row, value in zip(out[i : i + batch], values, strict=True):
                    row[name] = float(value)
        for point, row, rec in zip(points, out, recs, strict=True):
            b = from_uint8(rec, self.device)
            if self.dists is not None:
                row["dists"] = float(self.dists(a, b))
            if self.distribution:
                self._add_patches(point, ref, hific_patches(a), hific_patches(b))
        return out

    def _point(self, point: str) -> dict:
        """Running state of one RD point's distribution metrics: features only, never the patches."""
        if point not in self._points:
            state: dict = {"refs": [], "recs": [], "fid": None, "kid": None}
            if self.inception_ok and {"fid", "kid"} & set(self.metrics):
                from torchmetrics.image.fid import FrechetInceptionDistance
                from torchmetrics.image.kid import KernelInceptionDistance

                state["fid"] = FrechetInceptionDistance(normalize=True).to(self.device)
                state["kid"] = KernelInceptionDistance(subset_size=50, normalize=True).to(self.device)
            self._points[point] = state
        return self._points[point]

    def reference_patch_features(self, ref: np.ndarray, batch: int = 32) -> np.ndarray:
        """fd-stlpips-vgg features of the HiFiC patches of ``ref`` (computed once per image)."""
        key = hashlib.sha1(ref.tobytes()).hexdigest()
        if key not in self._ref_features:
            self._ref_features[key] = self.patch_features(hific_patches(from_uint8(ref, self.device)), batch)
        return self._ref_features[key]

    @torch.no_grad()
    def patch_features(self, patches: torch.Tensor, batch: int = 32) -> np.ndarray:
        """(N, 3, 256, 256) in [0, 1] -> (N, 1472) float64: ST-LPIPS-VGG layers, spatially averaged."""
        net = self.fd_net.net
        feats = []
        for i in range(0, len(patches), batch):
            out = net.net(net.scaling_layer(patches[i : i + batch].to(self.device) * 2 - 1))
            feats.append(torch.cat([f.mean(dim=(2, 3)) for f in out], dim=1).cpu().double().numpy())
        return np.concatenate(feats) if feats else np.zeros((0, 1472))

    def add_features(self, point: str, ref_features: np.ndarray, rec_features: np.ndarray) -> None:
        """Join precomputed patch features (e.g. from a results cache) to ``point``'s fd-stlpips-vgg."""
        state = self._point(point)
        state["refs"].append(ref_features)
        state["recs"].append(rec_features)

    @torch.no_grad()
    def _add_patches(self, point: str, ref: np.ndarray, refs: torch.Tensor, recs: torch.Tensor,
                     batch: int = 32) -> None:
        state = self._point(point)
        if self.fd_net is not None:
            self.add_features(point, self.reference_patch_features(ref, batch), self.patch_features(recs, batch))
        if state["fid"] is not None:
            for i in range(0, len(refs), batch):
                for metric in (state["fid"], state["kid"]):
                    metric.update(refs[i : i + batch], real=True)
                    metric.update(recs[i : i + batch], real=False)

    def last_patch_features(self, point: str = "") -> np.ndarray:
        """The patch features most recently added to ``point`` (what a results cache stores)."""
        return self._points[point]["recs"][-1]

    def distribution_metrics(self, point: str = "") -> dict[str, float]:
        """FID / KID / fd-stlpips-vgg over the patches ``point`` gathered since the last call, then reset."""
        state = self._points.pop(point, None) or {"refs": [], "recs": [], "fid": None, "kid": None}
        refs, recs = (np.concatenate(f) if f else np.zeros((0, 1472)) for f in (state["refs"], state["recs"]))
        out: dict[str, float] = {}
        if not self.distribution:
            return out
        out["patches"] = float(len(refs))
        if len(refs) >= 2 and self.fd_net is not None:
            out["fd-stlpips-vgg"] = frechet_distance(refs, recs)
        if len(refs) >= 2 and state["fid"] is not None:
            if "fid" in self.metrics:
                out["fid"] = float(state["fid"].compute())
            if "kid" in self.metrics:
                state["kid"].subset_size = min(state["kid"].subset_size, len(refs))
                out["kid"] = float(state["kid"].compute()[0])
        return out
