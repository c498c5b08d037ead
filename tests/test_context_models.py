"""The two-pass checkerboard context models (``checkerboard``, ``entroformer``): exact coding, pass
order, the same paths as the hyperprior, and a checkerboard model started from a hyperprior."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, photo, photo_tensor, tiny_codec
from PIL import Image

from cdc.coding.bitstream import ENTROPY_MODEL_IDS
from cdc.coding.coder import Coder
from cdc.config import with_updates
from cdc.models.checkerboard import anchor_mask
from cdc.models.codec import CDCCodec
from cdc.training.trainer import init_weights
from cdc.zoo.checkpoint import CheckpointError, save_codec

MODELS = ("checkerboard", "entroformer")


@pytest.fixture(scope="module", params=MODELS)
def codec(request):
    return tiny_codec(overrides=(f"model.entropy_model={request.param}",))


@pytest.mark.parametrize("size", [(1, 1), (33, 65), (200, 133), (128, 128)])
def test_exact_round_trip_on_odd_sizes(codec, size):
    x = photo_tensor(size=size) if min(size) > 1 else torch.rand(1, 3, *size)
    enc = codec.compress(x)
    assert len(enc["strings"]) == 3  # z, anchors, non-anchors
    assert torch.equal(codec.entropy.decompress(enc["strings"], enc["shape"]), enc["y_hat"])
    coder = Coder(codec)
    encoded = coder.encode(x)
    x_hat, header = coder.decode(encoded.data)
    assert header.entropy_id == ENTROPY_MODEL_IDS[codec.entropy.name] and x_hat.shape == x.shape


@torch.no_grad()
def test_float64_files_decode_bit_exactly_with_another_convolution_implementation(codec):
    """Both passes' parameters (convolutions; transformer blocks, softmax, GELU) are float64 too: decoded with
    PyTorch's own convolutions and one thread, a file gives the encoder's ŷ to the bit."""
    x = photo_tensor(size=(128, 192))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))  # two, also where a test worker is given one
    try:
        enc = codec.compress(x)
        torch.set_num_threads(1)
        with torch.backends.mkldnn.flags(enabled=False):
            decoded = codec.entropy.decompress(enc["strings"], enc["shape"])
    finally:
        torch.set_num_threads(threads)
    assert codec.entropy.coder().dtype == torch.float64
    assert torch.equal(decoded, enc["y_hat"])


def test_pass_order_the_decoder_sees_exactly_the_encoders_context(codec):
    """Pass-1 parameters ignore y entirely; pass-2 parameters depend on the anchors only."""
    torch.manual_seed(1)
    em = copy.deepcopy(codec.entropy)
    if em.name == "checkerboard":  # its context starts switched off (last layer zero): switch it on
        torch.nn.init.normal_(em.params[-1].weight, std=0.1)
    hyper = torch.randn(1, 32, 12, 10)
    mask = anchor_mask(12, 10)
    y_hat = torch.randn(1, 16, 12, 10).round()
    with torch.no_grad():
        base = em._pass_params(hyper, y_hat)
        changed_non_anchor = em._pass_params(hyper, y_hat + 5 * (1 - mask))
        changed_anchor = em._pass_params(hyper, y_hat + 5 * mask * (torch.rand_like(y_hat) > 0.5))
        first = em._pass_params(hyper, None)
    for a, b in zip(base, changed_non_anchor, strict=True):
        assert torch.equal(a, b), "non-anchor values leaked into the context"
    assert not torch.equal(base[0] * (1 - mask), changed_anchor[0] * (1 - mask)), "anchors must drive the context"
    assert not torch.equal(first[0], base[0])
    # the decoder's pass-2 context is built from decoded anchors only, so the round trip above is exact


@torch.no_grad()
def test_a_checkerboard_model_started_from_a_hyperprior_codes_as_it_did(tmp_path):
    hyperprior = tiny_codec()
    save_codec(hyperprior, tmp_path / "h.safetensors")
    model = CDCCodec(with_updates(hyperprior.config, model={"entropy_model": "checkerboard"}))
    init_weights(model, str(tmp_path / "h.safetensors"))
    model.eval()
    y = hyperprior.g_a(photo_tensor(size=(128, 192)) * 2 - 1)
    assert torch.equal(model.g_a(photo_tensor(size=(128, 192)) * 2 - 1), y)
    (a, la), (b, lb) = hyperprior.entropy(y), model.entropy(y)
    assert torch.equal(a, b) and all(torch.allclose(la[k], lb[k]) for k in la)
    plain, context = (sum(map(len, m.entropy.compress(y)[0])) for m in (hyperprior, model))
    assert 0 <= context - plain <= 8  # one more rANS string: its flushed state and word alignment
    other = CDCCodec(with_updates(hyperprior.config, model={"entropy_model": "entroformer"}))
    with pytest.raises(CheckpointError, match=r"model\.entropy_model: checkpoint hyperprior vs run entroformer"):
        init_weights(other, str(tmp_path / "h.safetensors"))


@pytest.mark.parametrize("model", MODELS)
def test_trains_exports_and_codes_through_the_cli(tmp_path, model):
    env_train = [sys.executable, str(REPO / "cdc" / "train.py"), "--preset", "tiny", "--shards",
                 str(REPO / "tests/assets/tiny-shard"), "--output-dir", str(tmp_path / "m"), "--max-steps", "6",
                 "--rho", "0.5", "train.sample_every=0", f"model.entropy_model={model}"]
    env = {**os.environ, "CDC_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run(env_train, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((tmp_path / "m" / "config.json").read_text())
    assert info["config"]["model"]["entropy_model"] == model
    Image.fromarray(photo("coffee", (70, 90))).save(tmp_path / "c.png")
    cdc = [sys.executable, "-m", "cdc"]
    assert subprocess.run([*cdc, "compress", str(tmp_path / "c.png"), "-m", str(tmp_path / "m"), "-o",
                           str(tmp_path / "c.cdc")], env=env, capture_output=True).returncode == 0
    header = json.loads(subprocess.run([*cdc, "info", str(tmp_path / "c.cdc")], capture_output=True, text=True,
                                       env=env).stdout)
    assert header["entropy_model_id"] == ENTROPY_MODEL_IDS[model] and len(header["string_bytes"]) == 3
    r = subprocess.run([*cdc, "decompress", str(tmp_path / "c.cdc"), "-m", str(tmp_path / "m"), "-o",
                        str(tmp_path / "d.png")], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and Image.open(tmp_path / "d.png").size == (90, 70), r.stderr
