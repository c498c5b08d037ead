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
    # the fixed-rate members are the ones the grid and the λ lookup choose from; a variable-rate one is not
    assert set(family()) == {name for name in MEMBERS if not RESULTS["members"][name].get("rate_lambdas")}
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
        encoded = coder.encode(from_uint8(img), steps=1, gamma=0.0, seed=0)
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
