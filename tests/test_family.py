"""The shipped family's quality regression test: every member codes the committed held-out crops
(``tests/assets/heldout``) to the bytes and PSNR recorded when it was shipped
(``benchmarks/results/family.json``, written by ``scripts/train_family.py``), so that no later change
to the codec, the coder or the decoder silently degrades a shipped model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from cdc.coding.coder import Coder
from cdc.evaluation.metrics import psnr
from cdc.images import from_uint8, to_uint8
from cdc.zoo.checkpoint import load_codec, read_checkpoint_info
from cdc.zoo.pretrained import available, family

RESULTS = json.loads((REPO / "benchmarks" / "results" / "family.json").read_text())
CROPS = REPO / "tests" / "assets" / "heldout"
MEMBERS = sorted(RESULTS["members"])


def test_every_shipped_member_has_its_card_its_results_and_fits_the_size_limit():
    assert MEMBERS, "no family member recorded"
    # the fixed-rate members are the ones the grid and the λ lookup choose from; a variable-rate one and a
    # one-step student (its teacher's encoder) are not
    assert set(family()) == {name for name in MEMBERS if not RESULTS["members"][name].get("rate_lambdas")
                             and not RESULTS["members"][name].get("distilled_from")}
    for name in MEMBERS:
        path = available()[name]
        assert path.stat().st_size <= 10 * 2**20
        assert path.with_suffix(".md").is_file()
        assert read_checkpoint_info(path)["fingerprint"] == RESULTS["members"][name]["fingerprint"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MEMBERS)
def test_a_member_codes_the_held_out_crops_as_when_it_was_shipped(name):
    coder = Coder(load_codec(available()[name]))
    reference = RESULTS["members"][name]["regression"]
    assert sorted(reference) == sorted(p.name for p in CROPS.glob("*.png"))
    for crop, expected in reference.items():
        img = np.asarray(Image.open(CROPS / crop).convert("RGB"))
        encoded = coder.encode(from_uint8(img), seed=0)  # the model's default decode, as recorded
        assert len(encoded.data) == expected["bytes"], crop  # the entropy coder is exact on every machine
        quality = psnr(img, to_uint8(coder.decode(encoded.data)[0]))
        assert abs(quality - expected["psnr"]) < 0.05, (crop, quality, expected["psnr"])  # pixels: ±1 LSB


def test_each_shipped_model_carries_its_card_decode_and_every_entry_point_uses_it(tmp_path, capsys, monkeypatch):
    """A shipped model's file, its card and ``cdc models list`` agree on its default decode; a
    checkpoint that is not shipped keeps its config's sampler."""
    from cdc.cli import main
    from cdc.zoo.pretrained import DECODES, decode_line

    decodes = json.loads(DECODES.read_text())
    assert set(available()) <= set(decodes)
    img = from_uint8(np.asarray(Image.open(sorted(CROPS.glob("*.png"))[0]).convert("RGB")))
    for name, path in available().items():
        expected = (decodes[name]["steps"], decodes[name]["gamma"])
        assert decode_line(name) in path.with_suffix(".md").read_text()
        coder = Coder(load_codec(path))
        assert coder.default_decode == expected
        header = coder.parse(coder.encode(img).data)
        assert (header.steps, header.gamma) == expected
    copy = tmp_path / "copy.safetensors"  # the same weights outside the package: the config decides
    copy.write_bytes(available()["small-q1"].read_bytes())
    config = load_codec(copy).config.sampler
    assert Coder(load_codec(copy)).default_decode == (config.steps, config.gamma) != expected
    monkeypatch.setenv("CDC_HOME", str(tmp_path / "home"))  # an empty registry of its own
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert all(f"{decodes[name]['steps']} step" in listed[name] for name in available())


def test_the_targets_compare_perceptual_members_at_equal_rate_with_the_best_rho0_decode():
    """``benchmarks/family_heldout.py``'s checks on made-up rows: interpolation in log-rate over the
    ρ = 0 members' best decode per network, WebP only where it was judged, the rate span."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import family_heldout as bench

    def row(model, steps, bpp, dB, alex, vgg):
        return {"model": model, "steps": steps, "gamma": 0.0 if steps == 1 else 0.8, "bpp": bpp,
                "psnr-rgb": dB, "stlpips-alex": alex, "stlpips-vgg": vgg}

    rows = [row("lo", 1, 0.1, 28.0, 0.30, 0.40), row("lo", 9, 0.1, 28.1, 0.26, 0.42),
            row("hi", 1, 0.4, 31.0, 0.10, 0.20), row("hi", 9, 0.4, 30.9, 0.08, 0.21),
            row("p", 1, 0.2, 27.0, 0.15, 0.30)]
    curves = {"jpeg": [{"bpp": 0.2, "psnr-rgb": 25.0}, {"bpp": 0.8, "psnr-rgb": 33.0}],
              "webp": [{"bpp": 0.05, "psnr-rgb": 27.0}, {"bpp": 0.15, "psnr-rgb": 29.0, "stlpips-alex": 0.2,
                        "stlpips-vgg": 0.3}, {"bpp": 0.3, "psnr-rgb": 31.0, "stlpips-alex": 0.1, "stlpips-vgg": 0.2}],
              "avif": [{"bpp": 0.05, "psnr-rgb": 29.0}, {"bpp": 0.5, "psnr-rgb": 34.0}]}
    checks = bench.annotate(rows, curves, {"lo": (0.09, 0.0), "hi": (0.005, 0.0), "p": (0.045, 0.9)})
    # at 0.2 bpp, halfway in log-rate from 0.1 to 0.4: the best decodes' alex 0.26 -> 0.08, vgg 0.40 -> 0.20
    assert rows[-1]["alex_vs_rho0_pct"] == pytest.approx(100 * (0.15 / 0.17 - 1))
    assert rows[-1]["vgg_vs_rho0_pct"] == pytest.approx(100 * (0.30 / 0.30 - 1), abs=1e-9)
    # WebP at 0.2 bpp: alex 0.2 - 0.1 * log(0.2 / 0.15) / log(2) = 0.158, vgg 0.258
    assert checks["perceptual_below_webp"] == {"p 1": {"alex": True, "vgg": False}}
    assert "webp_alex" not in rows[0]  # WebP is judged at the perceptual members' rates only
    assert checks["rate_span"] == pytest.approx(4.0)
    assert checks["jpeg_plus_0.3dB"] == {"hi": pytest.approx(31.0 - 29.0), "lo": None}
    assert checks["gap_to_webp_db"]["lo"] == pytest.approx(27.0 + 2.0 * np.log(2) / np.log(3) - 28.1)
