"""Batched and compiled decoding: many files through one U-Net batch give each file's own image."""

import numpy as np
import pytest
import torch
from conftest import photo_tensor, tiny_codec
from PIL import Image

from cdc.cli import main
from cdc.coding.coder import Coder, DecodeError
from cdc.models.sampler import DDIMSampler, SamplerError


def test_per_item_seeds_draw_what_single_images_draw(codec):
    sampler = DDIMSampler(codec.diffusion, steps=2, gamma=0.8)
    batch = sampler.start_noise((3, 3, 8, 8), [5, 9, 5])
    for k, seed in enumerate([5, 9, 5]):
        assert torch.equal(batch[k : k + 1], sampler.start_noise((1, 3, 8, 8), seed))
    assert not torch.equal(batch[0], batch[1])
    with pytest.raises(SamplerError, match="2 seeds for a batch of 3"):
        sampler.start_noise((3, 3, 8, 8), [1, 2])


def _files(coder: Coder) -> list[bytes]:
    """Five files: two latent sizes, different seeds and gammas, one tiled, one damaged."""
    a, b = photo_tensor("astronaut", (128, 128)), photo_tensor("coffee", (128, 128))
    wide = photo_tensor("chelsea", (64, 192))
    good = [coder.encode(a, steps=2, seed=1), coder.encode(b, steps=2, seed=2), coder.encode(wide, steps=2, seed=3),
            coder.encode(a[..., :120, :100], steps=2, seed=4),  # pads to the same 128x128 latent as a and b
            coder.encode(wide, steps=2, tile=64, margin=32), coder.encode(b, steps=2, gamma=0.0)]
    files = [e.data for e in good]
    files.insert(2, files[0][:-9])  # truncated: refused, the others still decode
    return files


def test_decode_many_matches_one_by_one(codec):
    coder = Coder(codec)
    files = _files(coder)
    results = {i: (image, stream) for i, image, stream in coder.decode_many(files, batch_size=3)}
    assert sorted(results) == list(range(len(files)))
    assert isinstance(results[2][0], DecodeError) and results[2][1] is None
    for i, data in enumerate(files):
        if i == 2:
            continue
        alone, stream = coder.decode_uint8(data)
        image = results[i][0]
        assert image.shape == alone.shape == (stream.height, stream.width, 3)
        diff = np.abs(image.astype(int) - alone.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (i, diff.max(), (diff > 0).mean())


def test_batches_are_capped_by_pixels(codec, monkeypatch):
    import cdc.coding.coder

    coder = Coder(codec)
    files = [coder.encode(photo_tensor("astronaut", (128, 128)), steps=1, seed=k).data for k in range(5)]
    batches = []
    reconstruct = codec.reconstruct
    monkeypatch.setattr(codec, "reconstruct", lambda y, *a, **k: batches.append(y.shape[0]) or reconstruct(y, *a, **k))
    monkeypatch.setattr(cdc.coding.coder, "BATCH_MAX_PIXELS", 2 * 128 * 128)
    assert len(list(coder.decode_many(files, batch_size=8))) == 5
    assert batches == [2, 2, 1]


def test_cli_batches_like_single_files(tmp_path, model_dir):
    codec = tiny_codec()
    coder = Coder(codec)
    names = []
    for i, data in enumerate(_files(coder)):
        names.append(tmp_path / f"f{i}.cdc")
        names[-1].write_bytes(data)
    args = [*map(str, names), "-m", str(model_dir), "--device", "cpu"]
    assert main(["decompress", *args, "-o", str(tmp_path / "b1"), "--batch", "1"]) == 1  # the damaged file
    assert main(["decompress", *args, "-o", str(tmp_path / "b4"), "--batch", "4"]) == 1
    written = sorted(p.name for p in (tmp_path / "b4").iterdir())
    assert written == sorted(f"f{i}.png" for i in range(len(names)) if i != 2)
    for name in written:
        one, many = (np.asarray(Image.open(tmp_path / d / name), dtype=int) for d in ("b1", "b4"))
        assert np.abs(one - many).max() <= 1


def test_cuda_device_refused_without_cuda(tmp_path, model_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["decompress", str(tmp_path / "x.cdc"), "-m", str(model_dir), "-o", str(tmp_path / "o"),
                 "--device", "cuda"]) == 1
    assert "--device cuda: no CUDA device on this machine" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_decoder_matches_eager():
    """torch.compile of the U-Net (inductor on the CPU; CUDA graphs on a GPU) changes float rounding only."""
    codec = tiny_codec()
    y = codec.compress(photo_tensor("astronaut", (128, 192)))["y_hat"]
    eager = codec.reconstruct(y, steps=3, gamma=0.8, seed=7)
    compiled = codec.compile_decoder().reconstruct(y, steps=3, gamma=0.8, seed=7)
    assert (compiled - eager).abs().max() < 1e-4
    bf16 = codec.reconstruct(y, steps=3, gamma=0.8, seed=7, precision="bf16")
    psnr = -10 * torch.log10(((bf16 - eager) / 2).square().mean())
    assert psnr > 35
    codec.train()  # weights may change: the compiled snapshot is dropped
    assert not codec._decode_unets
