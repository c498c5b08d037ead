"""``cdc init|compress|decompress|info``, including every bad input of the codec issue."""

import json

import pytest
import torch
from badimages import make_corpus
from conftest import run_cli

from cdc.cli import main


@pytest.fixture
def images(tmp_path):
    return make_corpus(tmp_path / "img")


@pytest.fixture
def model(tmp_path):
    assert main(["init", "--preset", "tiny", "-o", str(tmp_path / "model")]) == 0
    return tmp_path / "model"


@pytest.fixture
def cdc_file(tmp_path, images, model):
    out = tmp_path / "clean.cdc"
    assert main(["compress", str(images["clean.png"]), "-m", str(model), "-o", str(out)]) == 0
    return out


def one_error_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("cdc: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_real_process_round_trip(tmp_path, images):
    """The console entry point in a real process: init, compress, info, decompress."""
    assert run_cli("init", "--preset", "tiny", "-o", tmp_path / "m").returncode == 0
    r = run_cli("compress", images["clean.jpg"], images["gray.png"], "-m", tmp_path / "m", "-o", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert "gray.png: grayscale image converted to RGB" in r.stderr
    info = run_cli("info", tmp_path / "c" / "clean.cdc")
    header = json.loads(info.stdout)
    assert (header["width"], header["height"]) == (128, 96) and header["bpp"] > 0
    r = run_cli("decompress", tmp_path / "c" / "clean.cdc", "-m", tmp_path / "m", "-o", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    from PIL import Image

    assert Image.open(tmp_path / "d" / "clean.png").size == (128, 96)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing.png", "no such file"),
        ("text.png", "not a recognised image"),
        ("truncated.jpg", "truncated or corrupt"),
        ("empty.png", "empty file"),
    ],
)
def test_bad_images_fail_cleanly(tmp_path, images, model, capsys, case, reason):
    src = images.get(case, tmp_path / case)
    out = tmp_path / "out"
    assert main(["compress", str(src), str(images["clean.jpg"]), "-m", str(model), "-o", str(out)]) == 1
    one_error_line(capsys.readouterr().err, str(src), reason)
    # the good file of the same call is still written, the bad one leaves nothing
    assert sorted(p.name for p in out.iterdir()) == ["clean.cdc"]


def _mutate(data: bytes, case: str) -> bytes:
    if case == "magic":
        return b"JUNK" + data[4:]
    if case == "version":
        return data[:4] + b"\x07" + data[5:]
    if case == "crc":
        return data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:]
    if case == "truncated":
        return data[: len(data) - 7]
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "reason"),
    [("magic", "wrong magic"), ("version", "format version 7"), ("crc", "CRC mismatch"), ("truncated", "truncated")],
)
def test_bad_bitstreams_fail_cleanly(tmp_path, cdc_file, model, capsys, case, reason):
    bad = tmp_path / f"{case}.cdc"
    bad.write_bytes(_mutate(cdc_file.read_bytes(), case))
    out = tmp_path / "out"
    assert main(["decompress", str(bad), "-m", str(model), "-o", str(out)]) == 1
    one_error_line(capsys.readouterr().err, str(bad), reason)
    assert not out.exists() or not any(out.iterdir())
    assert main(["info", str(bad)]) == 1


def test_bitstream_from_another_model(tmp_path, cdc_file, capsys):
    assert main(["init", "--preset", "tiny", "--seed", "1", "-o", str(tmp_path / "other")]) == 0
    out = tmp_path / "out.png"
    assert main(["decompress", str(cdc_file), "-m", str(tmp_path / "other"), "-o", str(out)]) == 1
    one_error_line(capsys.readouterr().err, str(cdc_file), "different model")
    assert not out.exists()


@pytest.mark.parametrize("steps", ["100000"])  # 0 is refused at parse time (test_adversarial.py)
def test_steps_out_of_range(tmp_path, cdc_file, model, images, capsys, steps):
    out = tmp_path / "out.png"
    assert main(["decompress", str(cdc_file), "-m", str(model), "-o", str(out), "--steps", steps]) == 1
    one_error_line(capsys.readouterr().err, str(cdc_file), "steps must be in [1, 1000]")
    assert not out.exists()
    assert main(["compress", str(images["clean.png"]), "-m", str(model), "-o", str(tmp_path / "x.cdc"),
                 "--steps", steps]) == 1
    one_error_line(capsys.readouterr().err, "clean.png", "steps must be in")


def test_missing_model(tmp_path, images, capsys):
    assert main(["compress", str(images["clean.png"]), "-m", str(tmp_path / "nope"), "-o", str(tmp_path)]) == 1
    one_error_line(capsys.readouterr().err, "nope", "no such model")


def test_decode_steps_override_and_precision(tmp_path, cdc_file, model):
    out = tmp_path / "o.png"
    assert main(["decompress", str(cdc_file), "-m", str(model), "-o", str(out), "--steps", "2",
                 "--precision", "bf16"]) == 0
    assert out.is_file()


def test_existing_outputs_are_never_replaced_without_overwrite(tmp_path, images, cdc_file, model, capsys):
    """Decoding next to the original photo must not destroy it; the other files are still processed."""
    photos = tmp_path / "photos"
    photos.mkdir()
    original = photos / "clean.png"
    original.write_bytes(images["clean.png"].read_bytes())
    other = tmp_path / "other.cdc"
    other.write_bytes(cdc_file.read_bytes())
    assert main(["decompress", str(cdc_file), str(other), "-m", str(model), "-o", str(photos)]) == 1
    one_error_line(capsys.readouterr().err, str(original), "exists", "--overwrite")
    assert original.read_bytes() == images["clean.png"].read_bytes() and (photos / "other.png").is_file()
    assert main(["decompress", str(cdc_file), "-m", str(model), "-o", str(original), "--overwrite"]) == 0
    assert original.read_bytes() != images["clean.png"].read_bytes()
    assert main(["compress", str(images["clean.png"]), "-m", str(model), "-o", str(cdc_file)]) == 1
    one_error_line(capsys.readouterr().err, str(cdc_file), "exists")


def test_single_output_with_the_wrong_suffix_is_refused_not_made_a_directory(tmp_path, images, model, capsys):
    assert main(["compress", str(images["clean.png"]), "-m", str(model), "-o", str(tmp_path / "x.png")]) == 1
    one_error_line(capsys.readouterr().err, "x.png", "must end in .cdc")
    assert not (tmp_path / "x.png").exists()


def test_init_from_a_trained_model_keeps_its_weights(tmp_path, model):
    from cdc.zoo.checkpoint import load_codec

    assert main(["init", "--from", str(model), "-o", str(tmp_path / "copy"), "sampler.steps=2"]) == 0
    copy, source = load_codec(tmp_path / "copy"), load_codec(model)
    assert copy.config.sampler.steps == 2
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), source.state_dict().values(),
                                                 strict=True))
    assert main(["init", "--from", str(model), "-o", str(tmp_path / "bad"), "model.unet_dim=4"]) == 1
    assert main(["init", "--from", "no-such-model", "-o", str(tmp_path / "bad")]) == 1
