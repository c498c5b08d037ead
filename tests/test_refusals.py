"""Bad settings, damaged model folders and malformed model references, as a user or a stranger's
file passes them in: each is refused with one line naming the problem, a non-zero exit status, no
traceback, and nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, prefect_harness, run_cli, tiny_codec
from test_adversarial import one_line

TINY_SHARD = REPO / "tests" / "assets" / "tiny-shard"
IMAGE = REPO / "tests" / "assets" / "heldout" / "building-256.png"


def _train(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cdc.train", "--shards", str(TINY_SHARD), "--output-dir", str(out),
                           "--max-steps", "1", "train.sample_every=0", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


@pytest.mark.parametrize(("override", "message"), [
    ("train.warmup_steps=-1", "train.warmup_steps must be >= 0"),
    ("train.grad_clip=-1", "train.grad_clip must be >= 0"),
    ("train.crop=65536", "train.crop must be <= 4096"),
    ("train.ema_start=-5", "train.ema_start must be >= 0"),
    ("train.mixed_precision=fp16", "train.mixed_precision must be one of ('auto', 'bf16', 'no')"),
])
def test_training_settings_out_of_range_are_refused_at_parse_time(tmp_path, override, message):
    r = _train(tmp_path / "out", override)
    assert r.returncode == 2
    one_line(r, "cdc train: error:", message)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_overrides_may_stand_between_and_after_flags(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cdc.train", "--shards", str(TINY_SHARD), "train.crop=64",
                        "--output-dir", str(tmp_path / "out"), "train.lr=1e-4", "--max-steps", "1",
                        "train.sample_every=0"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    import json

    config = json.loads((tmp_path / "out" / "train_config.json").read_text())["train"]
    assert (config["crop"], config["lr"]) == (64, 1e-4)


def _saved(tmp_path: Path) -> Path:
    from cdc.zoo.checkpoint import save_codec

    return save_codec(tiny_codec(), tmp_path / "model")


def test_weights_of_another_dtype_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = _saved(tmp_path)
    state = load_file(model / "model.safetensors")
    save_file({k: v.to(torch.int32) if v.is_floating_point() else v for k, v in state.items()},
              model / "model.safetensors")
    r = run_cli("compress", IMAGE, "-m", model, "-o", tmp_path / "x.cdc")
    assert r.returncode != 0
    one_line(r, "cdc: error:", "unexpected dtype I32 for", "(the model needs F32)")
    assert not (tmp_path / "x.cdc").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("[" * 10**6 + "]" * 10**6, "broken checkpoint config (nested too deeply)"),
    (" " * (17 * 2**20), "broken checkpoint config (larger than 16777216 bytes)"),
])
def test_hostile_checkpoint_configs_are_refused(tmp_path, text, message):
    model = _saved(tmp_path)
    (model / "config.json").write_text(text)
    r = run_cli("compress", IMAGE, "-m", model, "-o", tmp_path / "x.cdc")
    assert r.returncode != 0
    one_line(r, "cdc: error:", str(model / "config.json"), message)


@pytest.mark.parametrize(("ref", "message"), [
    ("best:bpp<=0.3,objective=perception,objective=distortion", "objective given twice"),
    ("models:/cdc-x-rho0@q1/../../", "not models:/NAME@ALIAS or models:/NAME/VERSION"),
    ("models:/cdc-x-rho0/1/extra", "not models:/NAME@ALIAS or models:/NAME/VERSION"),
    ("/dev/zero", "/dev/zero: not a regular file"),
])
def test_malformed_model_references_are_refused(tmp_path, ref, message):
    r = run_cli("compress", IMAGE, "-m", ref, "-o", tmp_path / "x.cdc", env={"CDC_HOME": str(tmp_path / "home")})
    assert r.returncode != 0
    one_line(r, "cdc: error:", message)


def _grid_parameters(**changes) -> dict:
    from pipelines.grid_params import grouped

    return grouped(**{"lmbdas": [0.01, 0.05], "rhos": [0.0], "corpus": ["photos/"], **changes})


@pytest.mark.parametrize(("changes", "message"), [
    ({"lmbdas": [float("nan")]}, "grid.lmbdas.0: Input should be a finite number"),
    ({"lmbdas": []}, "grid.lmbdas: List should have at least 1 item"),
    ({"rhos": [1.5]}, "grid.rhos.0: Input should be less than or equal to 1"),
    ({"lmbdas": [0.01, 0.01]}, "grid.lmbdas: .* repeats a value"),
    ({"corpus": None}, "data: .* give corpus .* or shards"),
    ({"cell_train_steps": 0}, "training.cell_train_steps: Input should be greater than or equal to 1"),
    ({"retries": -1}, "execution.retries: Input should be greater than or equal to 0"),
    ({"distortion_decode": [0, -1]}, r"evaluation.distortion_decode.0: Input should be greater than or equal to 1"),
    ({"distortion_decode": ["a"]}, "evaluation.distortion_decode"),
    ({"baselines": ["gif"]}, "evaluation.baselines: .*unknown baseline 'gif'"),
    ({"metrics": "psnr,nope"}, "evaluation.metrics: .*unknown metric"),
    ({"overrides": ["train.crop=63"]}, "training: .*train.crop must be a multiple of 64"),
    ({"cell_overrides": {"0.05/0": ["train.lr=-1"]}}, "training: .*train.lr must be > 0"),
    ({"split_val": 1.0}, "data.split_val"),
    ({"preset": "huge"}, "training: .*preset 'huge' is not one of tiny, small, paper"),
    ({"launcher": "ssh"}, "execution.launcher: Input should be 'local', 'slurm' or 'k8s'"),
    ({"launcher": "slurm", "launcher_options": {"nodez": 2}}, "execution: .*unknown option nodez"),
])
def test_grid_parameters_are_refused_before_any_task_runs(changes, message):
    """What Prefect checks when a flow run starts (a deployment run, or a call): one line per bad field,
    named by its path in the groups."""
    from prefect.exceptions import ParameterTypeError

    from pipelines.train_grid import train_grid

    with pytest.raises(ParameterTypeError, match=message):
        train_grid.validate_parameters(_grid_parameters(**changes))
    train_grid.validate_parameters(_grid_parameters())  # the defaults pass


def test_flat_keywords_that_no_group_has_are_refused():
    from pipelines.grid_params import grouped

    with pytest.raises(TypeError, match="train-grid has no parameter lambdas"):
        grouped(lambdas=[0.1], rhos=[0])


@pytest.mark.slow
def test_a_grid_flow_with_a_bad_parameter_fails_before_it_creates_anything(tmp_path):
    from prefect.exceptions import ParameterTypeError

    from pipelines.train_grid import train_grid

    with prefect_harness(), pytest.raises(ParameterTypeError, match=r"grid\.lmbdas\.0: Input should be a finite"):
        train_grid(grid={"lmbdas": [float("nan")], "rhos": [0.0]}, data={"corpus": [str(tmp_path)]},
                   execution={"output_dir": str(tmp_path / "grid")})
    assert not (tmp_path / "grid").exists()


def test_reading_a_file_allocates_what_it_holds_not_the_cap(tmp_path):
    """Under an address-space limit (``ulimit -v``, as batch systems set), a small file is read: the
    read must not reserve the 1 GiB cap up front."""
    (tmp_path / "small.cdc").write_bytes(b"x" * 1000)
    code = ("import resource, sys\nfrom shards.sources import read_local_file\n"
            "size = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize')) * 1024\n"
            "resource.setrlimit(resource.RLIMIT_AS, (size + 256 * 2**20, resource.RLIM_INFINITY))\n"
            "print(len(read_local_file(sys.argv[1])))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "small.cdc")], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "1000", r.stderr[-2000:]
