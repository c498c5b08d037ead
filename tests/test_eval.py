"""Evaluation harness: metric values, patch protocol, BD-rate, baselines, datasets, CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from badimages import make_corpus
from conftest import REPO, photo
from PIL import Image

from cdc.cli import main
from cdc.evaluation.baselines import BUILDERS, build_baseline
from cdc.evaluation.datasets import DatasetError, dataset_images, load_eval_image
from cdc.evaluation.metrics import MetricSuite, frechet_distance, hific_patches, ms_ssim, patch_count, psnr
from cdc.evaluation.rd import bd_rate


@pytest.fixture(scope="module")
def suite():
    return MetricSuite("cpu")


def test_psnr_of_a_known_error():
    ref = np.full((64, 64, 3), 100, np.uint8)
    assert psnr(ref, ref + 5) == pytest.approx(10 * np.log10(255**2 / 25))
    assert psnr(ref, ref) == float("inf")


def test_identical_images_have_perfect_scores(suite):
    img = photo("astronaut")  # 512 x 512: 5 HiFiC patches
    scores = suite.pair(img, img.copy())
    assert scores["ms-ssim-rgb"] == pytest.approx(1.0, abs=1e-6)
    assert scores["psnr-rgb"] == float("inf")
    distances = [k for k in scores if "lpips" in k or k == "dists"]
    assert {"stlpips-alex", "stlpips-vgg"} <= set(distances)
    assert all(scores[k] == pytest.approx(0.0, abs=1e-6) for k in distances)
    assert suite.distribution_metrics()["fd-stlpips-vgg"] == pytest.approx(0.0, abs=1e-6)


def _jpegs(img: np.ndarray, qualities=(5, 30, 90)) -> list[np.ndarray]:
    jpeg = build_baseline("jpeg")
    return [jpeg.decode(jpeg.encode(img, q)) for q in qualities]


def test_batched_comparison_equals_the_networks_own_forward(suite):
    ref = photo("chelsea")
    recs = _jpegs(ref)
    rows = suite.compare(ref, recs, batch=2)
    for name in ("stlpips-alex", "stlpips-vgg"):
        net = suite.distances[name]
        a = torch.from_numpy(ref.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        for row, rec in zip(rows, recs, strict=True):
            b = torch.from_numpy(rec.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
            with torch.no_grad():
                assert row[name] == pytest.approx(float(net(a, b)), rel=1e-5, abs=1e-7), name
    assert [r["psnr-rgb"] for r in rows] == [psnr(ref, r) for r in recs]
    assert suite.distribution_metrics("")["patches"] == 3 * patch_count(*ref.shape[:2])


def test_metric_selection_builds_only_what_it_needs():
    from cdc.evaluation.metrics import DEFAULT_METRICS, parse_metrics

    fast = MetricSuite("cpu", parse_metrics("default"))
    assert set(fast.distances) == {"stlpips-alex"} and fast.fd_net is None
    row = fast.pair(photo("chelsea"), _jpegs(photo("chelsea"))[0])
    assert set(row) == set(DEFAULT_METRICS)
    assert fast.distribution_metrics() == {}
    assert parse_metrics("psnr-rgb,report")[:2] == ("psnr-rgb", "ms-ssim-rgb")
    with pytest.raises(ValueError, match=r"unknown metric 'psnr'.*known: psnr-rgb"):
        parse_metrics("psnr")


def test_unknown_metric_is_refused_at_parse_time(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--baseline", "jpeg", "--metrics", "ssim", "-o", "x"])
    assert exc.value.code == 2 and "unknown metric 'ssim'" in capsys.readouterr().err


def test_baseline_results_come_from_the_cache_unchanged(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CDC_EVAL_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "photos"
    data.mkdir()
    for name in ("chelsea", "coffee"):
        Image.fromarray(photo(name, (256, 320))).save(data / f"{name}.png")
    args = ["eval", "--baseline", "jpeg", "--dataset", "folder", "--root", str(data), "--metrics",
            "psnr-rgb,stlpips-alex,fd-stlpips-vgg", "--save-recon", "1"]
    runs = []
    for i, extra in enumerate(([], [], ["--no-cache"])):
        assert main([*args, *extra, "-o", str(tmp_path / f"out{i}")]) == 0
        runs.append(json.loads((tmp_path / f"out{i}" / "JPEG.json").read_text())["results"])
        assert (tmp_path / f"out{i}" / "recon" / "JPEG" / "q5" / "chelsea.png").is_file()
    n = len(build_baseline("jpeg").qualities) * 2
    err = capsys.readouterr().err
    assert f"0 hits, {n} measured" in err and f"{n} hits, 0 measured" in err
    assert runs[1] == runs[0]  # every value, times included, from the cache
    for key in ("bpp", "psnr-rgb", "stlpips-alex", "fd-stlpips-vgg"):  # measured again: the same values
        assert runs[2][key] == pytest.approx(runs[0][key], rel=1e-5), key
    # a metric the cache lacks is measured, and the entry keeps the metrics it had
    assert main([*args[:-4], "--metrics", "ms-ssim-rgb", "-o", str(tmp_path / "out3")]) == 0
    assert main([*args, "-o", str(tmp_path / "out4")]) == 0
    err = capsys.readouterr().err
    assert f"0 hits, {n} measured" in err and f"{n} hits, 0 measured" in err


def test_small_images_have_no_ms_ssim():
    img = photo("astronaut", (100, 300))
    assert ms_ssim(img, img) is None


def test_frechet_distance_of_identical_sets_is_zero_and_grows_with_shift():
    feats = np.random.default_rng(0).normal(size=(200, 8))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(feats, feats + 1.0) == pytest.approx(8.0, rel=1e-6)


@pytest.mark.parametrize(("h", "w", "n"),
                         [(512, 768, 8), (1356, 2040, 63), (256, 256, 1), (300, 200, 0), (383, 600, 2)])
def test_patch_counts_follow_the_hific_formula(h, w, n):
    assert patch_count(h, w) == n
    assert hific_patches(torch.zeros(1, 3, h, w)).shape == (n, 3, 256, 256)


def test_bd_rate_known_values():
    anchor = {"results": {"bpp": [0.1, 0.2, 0.4, 0.8], "psnr-rgb": [28.0, 30.5, 33.0, 35.5]}}
    cheaper = {"results": {"bpp": [0.09, 0.18, 0.36, 0.72], "psnr-rgb": [28.0, 30.5, 33.0, 35.5]}}
    assert bd_rate(anchor, anchor) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(anchor, cheaper) == pytest.approx(-10.0, abs=1e-6)
    worse = {"results": {"bpp": [0.1, 0.2, 0.4, 0.8], "psnr-rgb": [17.0, 18.5, 20.5, 21.0]}}
    with pytest.raises(ValueError, match="psnr-rgb ranges do not overlap"):
        bd_rate(anchor, worse)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_baseline_gains_bits_with_quality(name):
    img = photo("coffee", (192, 256))
    baseline = build_baseline(name)
    sizes = [len(baseline.encode(img, q)) for q in baseline.qualities]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1], sizes
    assert baseline.decode(baseline.encode(img, baseline.qualities[-1])).shape == img.shape


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CDC_DATA", str(tmp_path))
    with pytest.raises(DatasetError, match=r"--download.*curl -L -o /tmp/div2k.zip https://data.vision.ee.ethz.ch"):
        dataset_images("div2k")
    with pytest.raises(DatasetError, match=r"kodim01\.png"):
        dataset_images("kodak")


def test_known_dataset_from_root_and_altered_file_detected(tmp_path):
    root = tmp_path / "kodak"
    root.mkdir()
    for i in range(1, 25):
        Image.fromarray(photo("astronaut", (64, 96))).save(root / f"kodim{i:02d}.png")
    files = dataset_images("kodak", root)
    assert len(files) == 24 and files[0].name == "kodim01.png"
    (root / "checksums.json").write_text(json.dumps({"kodim01.png": "0" * 64}))
    with pytest.raises(DatasetError, match=r"kodim01\.png: SHA-256 differs"):
        dataset_images("kodak", root)


def test_cdc768_protocol():
    path_img = Image.fromarray(photo("astronaut"))  # 512 x 512
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "a.png"
        path_img.save(p)
        assert load_eval_image(p, "cdc768").size == (768, 768)
        assert load_eval_image(p, "full").size == (512, 512)


def test_corrupt_image_in_a_dataset_is_named(tmp_path, capsys):
    make_corpus(tmp_path / "data")
    rc = main(["eval", "--baseline", "jpeg", "--dataset", "folder", "--root", str(tmp_path / "data"),
               "-o", str(tmp_path / "out"), "--metrics", "psnr-rgb"])
    assert rc == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cdc: error:")]
    assert len(lines) == 1 and "bomb.png" in lines[0] and "over the limit" in lines[0], err


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """A tiny CDC model and two baselines on 2 real photos, through the CLI."""
    root = tmp_path_factory.mktemp("eval")
    data = root / "photos"
    data.mkdir()
    for name in ("chelsea", "coffee"):
        Image.fromarray(photo(name, (288, 384))).save(data / f"{name}.png")
    models = []
    for seed, lmbda in ((0, 0.01), (1, 0.02)):
        out = root / f"m{seed}"
        assert main(["init", "--preset", "tiny", "--seed", str(seed), "-o", str(out), f"loss.lmbda={lmbda}"]) == 0
        models.append(str(out))
    out = root / "out"
    assert main(["eval", *models, "--baseline", "jpeg,webp", "--dataset", "folder", "--root", str(data),
                 "--steps", "1,2", "--metrics", "all", "-o", str(out)]) == 0
    return out


@pytest.mark.slow
def test_eval_writes_compressai_schema(eval_run):
    files = sorted(p.name for p in eval_run.glob("*.json") if "per-image" not in p.name)
    assert files == ["CDC_tiny_x-param_rho0_1_steps.json", "CDC_tiny_x-param_rho0_2_steps.json", "JPEG.json",
                     "WebP.json"]
    cdc = json.loads((eval_run / files[0]).read_text())
    results = cdc["results"]
    assert len(results["bpp"]) == 2 and results["bpp"] == sorted(results["bpp"])
    for key in ("psnr-rgb", "ms-ssim-rgb", "stlpips-alex", "stlpips-vgg", "fd-stlpips-vgg", "encoding_time",
                "decoding_time", "bpp_estimated"):
        assert len(results[key]) == 2, key
    assert cdc["meta"]["images"] == 2 and cdc["meta"]["steps"] == 1
    assert "lpips-vgg" in cdc["meta"]["unavailable_metrics"]
    jpeg = json.loads((eval_run / "JPEG.json").read_text())["results"]
    assert len(jpeg["bpp"]) == len(build_baseline("jpeg").qualities)
    per_image = json.loads((eval_run / "JPEG.per-image.json").read_text())
    assert {r["image"] for r in per_image[0]["images"]} == {"chelsea.png", "coffee.png"}


@pytest.mark.slow
def test_compressai_plot_reads_our_json(eval_run, tmp_path):
    from compressai.utils.plot.__main__ import parse_json_file

    parsed = parse_json_file(eval_run / "JPEG.json", "psnr")
    assert len(parsed["xs"]) == len(parsed["ys"]) > 3
    r = subprocess.run([sys.executable, "-m", "compressai.utils.plot", "-f", str(eval_run / "JPEG.json"),
                        str(eval_run / "WebP.json"), "-o", str(tmp_path / "cai.png")], capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "cai.png").stat().st_size > 0, r.stderr


@pytest.mark.slow
def test_plot_gallery_and_bdrate_commands(eval_run, capsys):
    everything = [str(p) for p in sorted(eval_run.glob("*.json"))]  # `runs/eval/*.json`, per-image files too
    assert any("per-image" in p for p in everything)
    assert main(["plot", *everything, "--gallery"]) == 0
    plots = eval_run / "plots"
    assert (plots / "rd-psnr-rgb.png").is_file() and (plots / "rd-fd-stlpips-vgg.png").is_file()
    assert Image.open(plots / "gallery.png").width >= 4 * 64
    assert main(["bdrate", str(eval_run / "JPEG.json"), *everything, "--metrics", "psnr-rgb,stlpips-vgg"]) == 0
    out = capsys.readouterr().out
    assert "| WebP |" in out and "psnr-rgb" in out and "| JPEG |" not in out


def test_the_per_image_companions_are_not_results_files():
    from cdc.evaluation.rd import results_paths

    assert results_paths(["a/JPEG.json", "a/JPEG.per-image.json"]) == ["a/JPEG.json"]
    with pytest.raises(ValueError, match=r"no results files among 1 path\(s\): only .per-image.json companions"):
        results_paths(["a/JPEG.per-image.json"])


def test_held_out_images_of_a_shard_build_go_to_the_cache_not_the_shards(tmp_path, monkeypatch):
    from cdc.evaluation.datasets import shard_split_images
    from shards.build import build
    from shards.process import BuildConfig

    monkeypatch.setenv("CDC_DATA", str(tmp_path / "cache"))
    tiny = REPO / "tests" / "assets" / "tiny-shard"
    before = sorted(p.name for p in tiny.iterdir())
    with pytest.raises(DatasetError, match="no val shards"):
        shard_split_images(tiny)
    assert sorted(p.name for p in tiny.iterdir()) == before and not (tmp_path / "cache").exists()
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        Image.fromarray(photo("astronaut", (64 + 8 * i, 96))).save(src / f"{i}.png")
    out = tmp_path / "shards"
    build([str(src)], out, BuildConfig(split_val=0.5))
    files = shard_split_images(out)
    assert files and all(f.is_relative_to(tmp_path / "cache") for f in files)
    assert not any("images" in p.name for p in out.iterdir())
    assert shard_split_images(out) == files  # extracted once
