"""Rate-quality curves: BD-rate tables (the ``bjontegaard`` package), RD plots and a gallery.

BD-rate (Bjøntegaard, VCEG-M33) is the average bitrate difference, in percent, of a test curve
against an anchor at equal quality over their overlapping quality range; negative means savings.
We use PCHIP interpolation (JVET practice); it needs at least 4 points per curve. For metrics where
lower is better (LPIPS, DISTS, FID, KID, FD) the quality axis is negated before interpolation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LOWER_IS_BETTER = ("lpips", "dists", "fid", "kid", "fd-")
SKIP = ("bpp", "bpp_estimated", "bytes", "encoding_time", "decoding_time", "patches")


def slug(name: str) -> str:
    """A file-name-safe form of a curve or point name (results and reconstruction file names)."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")


def curve(name: str, description: str, points: list[dict[str, float]], meta: dict | None = None,
          point_meta: list[dict] | None = None) -> dict:
    """A CompressAI-schema curve (``name``, ``description``, ``meta``, ``results{metric: [...]}``) from
    one dict of metric values per RD point (``bpp`` included): points ordered by ``bpp``, keeping the
    metrics every point has; ``point_meta`` (one dict per point, e.g. its λ) goes to
    ``meta["points"]`` in the same order."""
    order = sorted(range(len(points)), key=lambda i: points[i]["bpp"])
    keys = [k for k in points[order[0]] if all(k in p for p in points)] if points else []
    out_meta = dict(meta or {})
    if point_meta is not None:
        out_meta["points"] = [point_meta[i] for i in order]
    return {"name": name, "description": description, "meta": out_meta,
            "results": {k: [points[i][k] for i in order] for k in keys}}


PER_IMAGE_SUFFIX = ".per-image.json"


def results_paths(paths: list[str | Path]) -> list[str | Path]:
    """``paths`` without the per-image companions that ``cdc eval`` writes beside each results file
    (``runs/eval/*.json`` matches both); raises ``ValueError`` when nothing else is left."""
    kept = [p for p in paths if not str(p).endswith(PER_IMAGE_SUFFIX)]
    if not kept:
        raise ValueError(f"no results files among {len(paths)} path(s): only {PER_IMAGE_SUFFIX} companions")
    return kept


def load(path: str | Path) -> dict:
    """A CompressAI-schema results file; raises ``ValueError`` naming it when it is not one."""
    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: not JSON ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict) or "bpp" not in data["results"]:
        raise ValueError(f"{path}: not a results file (needs results.bpp)")
    return data


def quality_metrics(data: dict) -> list[str]:
    """The quality (non-rate, non-time) metrics of a results file."""
    return [k for k in data["results"] if k not in SKIP]


def _signed(metric: str, values: list[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return -arr if any(metric.startswith(p) for p in LOWER_IS_BETTER) else arr


def bd_rate(anchor: dict, test: dict, metric: str = "psnr-rgb") -> float:
    """BD-rate in percent of ``test`` against ``anchor`` on ``metric`` (both CompressAI-schema dicts)."""
    import bjontegaard

    curves = []
    for data in (anchor["results"], test["results"]):
        if len(data["bpp"]) < 4:
            raise ValueError("BD-rate needs at least 4 points per curve")
        order = np.argsort(data["bpp"])
        rate, quality = np.asarray(data["bpp"], float)[order], _signed(metric, data[metric])[order]
        if np.any(np.diff(quality) <= 0):
            raise ValueError(f"{metric} does not improve monotonically with rate")
        curves += [rate, quality]
    low, high = max(curves[1][0], curves[3][0]), min(curves[1][-1], curves[3][-1])
    if low >= high:  # bjontegaard returns NaN here; say why instead
        span = [f"{abs(q[0]):.4g} to {abs(q[-1]):.4g}" for q in (curves[1], curves[3])]
        raise ValueError(f"the {metric} ranges do not overlap (anchor {span[0]}, test {span[1]})")
    return float(bjontegaard.bd_rate(*curves, method="pchip", require_matching_points=False, min_overlap=0))


def bd_table(anchor_path: str | Path, paths: list[str | Path], metrics: list[str] | None = None) -> tuple[str, dict]:
    """Markdown table of BD-rates of every curve against the anchor; also returned as a dict."""
    anchor = load(anchor_path)
    metrics = metrics or quality_metrics(anchor)
    table: dict[str, dict[str, float | str]] = {}
    for path in paths:
        test = load(path)
        row: dict[str, float | str] = {}
        for metric in metrics:
            if metric not in test["results"]:
                row[metric] = "n/a"
                continue
            try:
                row[metric] = bd_rate(anchor, test, metric)
            except (ValueError, np.linalg.LinAlgError) as exc:
                row[metric] = f"n/a ({exc})"
        table[test["name"]] = row
    lines = [f"BD-rate (%) vs {anchor['name']}; negative = fewer bits at equal quality", "",
             "| curve | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, row in table.items():
        cells = [f"{v:+.2f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines), table


def plot(paths: list[str | Path], out_dir: str | Path) -> list[Path]:
    """One RD plot (PNG) per quality metric, every curve on it; MS-SSIM in dB as CompressAI plots it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [load(p) for p in paths]
    metrics = sorted({m for c in curves for m in quality_metrics(c)})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(7, 5))
        for c in curves:
            if metric not in c["results"]:
                continue
            ys = np.asarray(c["results"][metric], dtype=float)
            if metric.startswith("ms-ssim"):
                ys = -10 * np.log10(1 - ys)
            style = "-" if c["name"].startswith("CDC") else "--"
            ax.plot(c["results"]["bpp"], ys, marker="o", linestyle=style, linewidth=1, label=c["name"])
        ax.set_xlabel("bits per pixel (real file size)")
        ax.set_ylabel(f"{metric} (dB)" if metric.startswith("ms-ssim") else metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        path = out_dir / f"rd-{metric}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def gallery(paths: list[str | Path], out_path: str | Path, crop: int = 256, target_bpp: float | None = None,
            originals: str | Path | None = None) -> Path:
    """Same crop of the first image across codecs, each at its point nearest ``target_bpp`` (bpp in
    the caption). Uses the reconstructions the harness saved next to the results files; with
    ``originals`` (the folder of the evaluated images) the original comes first."""
    panels: list[tuple[str, Image.Image]] = []
    image_name = None
    for path in paths:
        path = Path(path)
        data = load(path)
        per_image = json.loads(path.with_name(path.name.replace(".json", PER_IMAGE_SUFFIX)).read_text())
        image_name = image_name or per_image[0]["images"][0]["image"]
        candidates = [(p["point"], next(r for r in p["images"] if r["image"] == image_name)) for p in per_image]
        target = target_bpp if target_bpp is not None else float(np.median([r["bpp"] for _, r in candidates]))
        label, row = min(candidates, key=lambda c: abs(c[1]["bpp"] - target))
        recon = path.parent / "recon" / slug(data["name"]) / slug(label) / f"{Path(image_name).stem}.png"
        if recon.is_file():
            panels.append((f"{data['name']}\n{row['bpp']:.3f} bpp", Image.open(recon).convert("RGB")))
    if not panels:
        raise FileNotFoundError("no saved reconstructions next to the results files")
    if originals is not None:
        panels.insert(0, ("original", Image.open(Path(originals) / image_name).convert("RGB")))
    w, h = panels[0][1].size
    box = ((w - min(crop, w)) // 2, (h - min(crop, h)) // 2)
    box = (*box, box[0] + min(crop, w), box[1] + min(crop, h))
    tile_w, tile_h = box[2] - box[0], box[3] - box[1]
    # captions stay legible when a page scales the sheet down to its column (about 1/2 for 5 panels)
    font = ImageFont.load_default(size=max(14, tile_w // 11))
    caption_h = 2 * font.size + 12
    sheet = Image.new("RGB", (tile_w * len(panels), tile_h + caption_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (caption, img) in enumerate(panels):
        sheet.paste(img.crop(box), (i * tile_w, caption_h))
        draw.multiline_text((i * tile_w + 4, 4), caption, fill="black", font=font, spacing=2)
    out_path = Path(out_path)
    sheet.save(out_path)
    return out_path
