"""Unit tests of the outer ring's pure parts: the grid plan, the EMA, registry queries, launchers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cdc.training.ema import EMA
from pipelines.cells import plan_grid
from pipelines.launchers import cpu_share

PLAN = {"preset": "tiny", "prediction": "sample", "cell_train_steps": 10, "shards": "s/manifest.json",
        "shards_fingerprint": "f" * 8, "code_version": "0.1.0+gabc", "out": Path("/grid"), "experiment": "e"}


def test_plan_grid_orders_cells_keys_them_and_skips_registered_ones():
    plan = plan_grid([0.01, 0.05], [0.0, 0.9], **PLAN, overrides=["train.crop=64"],
                     cell_overrides={"0.05/0.9": ["train.lr=1e-4"]}, warm_key="w" * 16, warm_dir=Path("/base"))
    assert [c.label for c in plan.cells] == ["lmbda0.01-rho0", "lmbda0.05-rho0", "lmbda0.01-rho0.9",
                                             "lmbda0.05-rho0.9"]
    assert len({c.key for c in plan.cells}) == 4 and not plan.skipped
    last = plan.todo[-1]
    assert last.cell.overrides == ("train.crop=64", "train.lr=1e-4")
    assert last.output_dir == Path("/grid/cells") / f"lmbda0.05-rho0.9-{last.cell.key}"
    spec = last.job.spec
    assert spec.settings == {"train.max_steps": 10, "loss.lmbda": 0.05, "loss.rho": 0.9,
                             "diffusion.prediction": "sample"}  # typed, never through strings
    assert spec.init_from == "/base" and spec.resume == "latest" and spec.overrides == ("train.crop=64",
                                                                                       "train.lr=1e-4")
    assert spec.config().loss.lmbda == 0.05 and spec.config().train.lr == 1e-4
    assert spec.tags == {"cdc.role": "cell", "cdc.cell_key": last.cell.key}
    again = plan_grid([0.01, 0.05], [0.0, 0.9], **PLAN, overrides=["train.crop=64"],
                      cell_overrides={"0.05/0.9": ["train.lr=1e-4"]}, warm_key="w" * 16, warm_dir=Path("/base"),
                      registered={plan.cells[0].key})
    assert again.skipped == [plan.cells[0]] and [j.cell for j in again.todo] == plan.cells[1:]


def test_a_cells_key_changes_with_its_data_code_and_starting_point():
    key = plan_grid([0.01], [0.0], **PLAN).cells[0].key
    assert plan_grid([0.01], [0.0], **{**PLAN, "shards_fingerprint": "g" * 8}).cells[0].key != key
    assert plan_grid([0.01], [0.0], **{**PLAN, "code_version": "0.1.1"}).cells[0].key != key
    assert plan_grid([0.01], [0.0], **PLAN, warm_key="x").cells[0].key != key
    assert plan_grid([0.01], [0.0], **PLAN).cells[0].key == key


def test_grid_cells_start_from_the_family_member_nearest_in_lambda(monkeypatch):
    import cdc.zoo.pretrained as pretrained

    monkeypatch.setattr(pretrained, "family", lambda: {"q4": (0.005, 0.0), "q3": (0.01, 0.0), "q1": (0.045, 0.0),
                                                       "q1-perceptual": (0.045, 0.9)})
    assert [pretrained.nearest_member(x) for x in (0.001, 0.007, 0.0071, 0.02, 0.2)] == ["q4", "q4", "q3", "q3", "q1"]
    assert pretrained.nearest_member(0.2, rho=0.9) == "q1-perceptual"
    with pytest.raises(FileNotFoundError, match=r"rho = 0\.5"):
        pretrained.nearest_member(0.01, rho=0.5)
    plan = plan_grid([0.004, 0.05], [0.0, 0.9], **PLAN, bases={0.004: ("a" * 16, Path("/q4")),
                                                               0.05: ("b" * 16, Path("/q1"))})
    assert [(c.label, j.job.spec.init_from) for c, j in zip(plan.cells, plan.todo, strict=True)] == [
        ("lmbda0.004-rho0", "/q4"), ("lmbda0.05-rho0", "/q1"), ("lmbda0.004-rho0.9", "/q4"),
        ("lmbda0.05-rho0.9", "/q1")]
    assert plan.cells[0].warmup_key == "a" * 16 and plan.cells[1].warmup_key == "b" * 16


def test_ema_copies_until_start_then_averages_every_n_steps():
    model = nn.Linear(2, 1, bias=False)
    ema = EMA(model, decay=0.5, every=2, start=1)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model, 1)  # within start: a copy
    assert torch.equal(ema.shadow.weight, model.weight)
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update(model, 3)  # not a multiple of every: unchanged
    assert torch.all(ema.shadow.weight == 2.0)
    ema.update(model, 4)  # 0.5 * 2 + 0.5 * 4
    assert torch.all(ema.shadow.weight == 3.0)
    restored = EMA(nn.Linear(2, 1, bias=False))
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.shadow.weight, ema.shadow.weight) and not restored.shadow.weight.requires_grad


def test_ema_warmup_lets_a_short_run_export_recent_weights():
    model = nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.999, every=10, start=100, warmup=True)
    assert ema.decay_at(110) == pytest.approx(2 / 11) and ema.decay_at(100 + 10 * 10_000) == 0.999
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.update(model, 100)  # the copy at ``start``
    with torch.no_grad():
        model.weight.fill_(1.0)
    for step in range(101, 1901):
        ema.update(model, step)
    # without warm-up 0.999 ** 180 = 84 % of the shadow would still be the step-100 weights
    assert ema.shadow.weight.item() > 0.99


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A real MLflow SQLite registry with three versions of known metrics (no artifacts needed)."""
    monkeypatch.setenv("CDC_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from cdc.registry.catalog import client

    c = client()
    rows = {"cdc-x-rho0": [(0.1, 28.0, 0.30), (0.3, 31.0, 0.25)], "cdc-x-rho0.9": [(0.12, 27.0, 0.20)]}
    for name, points in rows.items():
        c.create_registered_model(name)
        for bpp, psnr, lpips in points:
            v = c.create_model_version(name, source=str(tmp_path))
            for key, value in {"div2k.bpp": bpp, "div2k.psnr-rgb": psnr, "div2k.stlpips-vgg": lpips}.items():
                c.set_model_version_tag(name, v.version, key, str(value))
    return c


def test_registry_find_picks_by_objective_under_the_rate(registry):
    from cdc.registry.catalog import RegistryError, find

    best = find(0.2, "distortion")
    assert best.metric("div2k", "bpp") <= 0.2 and best.metric("div2k", "psnr-rgb") == 28.0
    perceptual = find(0.2, "perception")
    assert perceptual.name == "cdc-x-rho0.9" and perceptual.metric("div2k", "stlpips-vgg") == 0.20
    assert find(1.0, "distortion").metric("div2k", "psnr-rgb") == 31.0
    with pytest.raises(RegistryError, match=r"at or under 0\.05 bpp"):
        find(0.05)
    with pytest.raises(RegistryError, match=r"evaluated on kodak .*\(datasets with evaluations: div2k\)"):
        find(1.0, dataset="kodak")


def test_one_default_dataset_the_registry_names_it_or_asks(registry, capsys):
    from cdc.cli import main
    from cdc.registry.catalog import RegistryError, find

    assert main(["models", "list"]) == 0
    assert "div2k.psnr-rgb" in capsys.readouterr().out  # the only dataset evaluated: no flag needed
    assert main(["models", "list", "--dataset", "kodak"]) == 1
    assert "no registered model evaluated on kodak (datasets with evaluations: div2k)" in capsys.readouterr().err
    registry.set_model_version_tag("cdc-x-rho0", "1", "shards.bpp", "0.1")
    registry.set_model_version_tag("cdc-x-rho0", "1", "shards.psnr-rgb", "25.0")
    with pytest.raises(RegistryError, match="the registered models have several: div2k, shards"):
        find(0.2)
    assert find(0.2, "distortion", dataset="shards").metric("shards", "bpp") == 0.1
    assert main(["models", "list"]) == 0
    assert "also evaluated on shards (--dataset NAME)" in capsys.readouterr().out


def test_local_launcher_commands_and_failure_report(tmp_path):
    from cdc.training.run_spec import RunSpec
    from pipelines.launchers import LaunchFailed, LocalLauncher, TrainJob

    job = TrainJob("cell", RunSpec(shards=(str(tmp_path / "none"),), output_dir=str(tmp_path / "out")))
    spec_file = str(tmp_path / "out" / "job.json")
    assert LocalLauncher().command(job)[1:] == ["-m", "cdc.train", "--job", spec_file, "--world-size", "1"]
    launch = LocalLauncher("infra/accelerate/cpu.yaml").command(job)  # its config asks for 2 processes
    assert launch[1:4] == ["launch", "--config_file", "infra/accelerate/cpu.yaml"] and launch[-2:] == ["--world-size",
                                                                                                       "2"]
    launch = LocalLauncher("infra/accelerate/cpu.yaml", num_processes=3).command(job)
    assert launch[launch.index("--num_processes") + 1] == "3" and launch[-1] == "3"
    lines: list[str] = []
    with pytest.raises(LaunchFailed, match=r"cell: exit status 2\n.*shards"):
        LocalLauncher().run(job, lines.append)
    assert any(line.startswith("[cell] ") for line in lines) and cpu_share() >= 1
    assert RunSpec.load(spec_file) == job.spec  # what the trainer read


def test_a_failed_cell_is_reported_by_its_own_error_line():
    from pipelines.launchers import LaunchFailed
    from pipelines.train_grid import failure_reason

    tail = ["cdc train: fast path auto: off (10 steps): eager fp32 step",
            "cdc train: error: s.tar: no training batch for 1e-06 s (train.data_timeout_s); --resume latest ...",
            "Exception ignored in: <function _ConnectionBase.__del__>", "BrokenPipeError: [Errno 32] Broken pipe"]
    assert failure_reason(LaunchFailed("cell: exit status 3\n" + "\n".join(tail))) == (
        "cell: exit status 3: cdc train: error: s.tar: no training batch for 1e-06 s (train.data_timeout_s); "
        "--resume latest ...")
    plain = LaunchFailed("cell: exit status 1\nTraceback\nValueError: x")
    assert failure_reason(plain) == "cell: exit status 1: ValueError: x"
    assert failure_reason(RuntimeError("one line")) == "one line" and failure_reason(RuntimeError()) == "RuntimeError"


def test_flags_and_a_job_file_make_the_same_run(tmp_path):
    import json
    import subprocess
    import sys

    from cdc.train import parse_args, spec_from_args
    from cdc.training.run_spec import RunSpec, SpecError

    flags = ["--preset", "small", "--shards", "s/manifest.json", "--output-dir", str(tmp_path / "run"),
             "--max-steps", "7", "--lmbda", "0.02", "--rho", "0.5", "--init-from", "small-base", "--resume", "latest",
             "--tag", "a=b", "--world-size", "2", "train.lr=1e-4"]
    spec = spec_from_args(parse_args(flags))
    assert spec.settings == {"train.max_steps": 7, "loss.lmbda": 0.02, "loss.rho": 0.5}
    path = spec.save(tmp_path / "job.json")
    loaded = spec_from_args(parse_args(["--job", str(path)]))
    assert loaded == spec and loaded.config() == spec.config()
    assert spec.config().train.lr == 1e-4 and spec.config().loss.rho == 0.5
    assert spec_from_args(parse_args(["--job", str(path), "--world-size", "4"])).world_size == 4
    data = json.loads(path.read_text())
    for bad, message in [({**data, "lmdba": 1}, "unknown field(s) lmdba"),
                         ({"output_dir": "x"}, "missing field(s) shards"),
                         ({**data, "shards": "s"}, "shards: expected a list of strings"),
                         ({**data, "world_size": 0}, "world_size must be >= 1")]:
        with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
            RunSpec.from_dict(bad)
    train = [sys.executable, "cdc/train.py"]
    root = Path(__file__).resolve().parents[1]
    for argv, fragment in [(["--job", str(path), "--preset", "tiny"], "--job holds the whole run; drop --preset"),
                           (["--preset", "tiny"], "required: --shards, --output-dir (or --job FILE)"),
                           (["--job", str(tmp_path / "none.json")], "none.json: cannot read")]:
        r = subprocess.run([*train, *argv], capture_output=True, text=True, cwd=root, timeout=120)
        assert r.returncode == 2 and fragment in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_fast_path_is_on_for_long_cpu_runs_only(monkeypatch):
    from cdc.config import load_config
    from cdc.training import distributed

    def path(*overrides, cuda=False, bf16=True):
        monkeypatch.setattr(distributed, "cpu_has_native_bf16", lambda: bf16)
        return distributed.step_path(load_config("small", list(overrides)).train, cuda=cuda)

    short, long = "train.max_steps=1999", f"train.max_steps={distributed.FAST_PATH_MIN_STEPS}"
    assert (path(short).compile, path(short).channels_last, path(short).mixed_precision) == (False, False, "auto")
    assert (path(long).compile, path(long).channels_last, path(long).mixed_precision) == (True, True, "bf16")
    assert path(long, bf16=False).mixed_precision == "auto"  # emulated bf16 would be slower
    assert path(long, "train.mixed_precision=no").mixed_precision == "no"
    assert not path(long, cuda=True).compile and "a GPU" in path(long, cuda=True).why
    assert not path(long, "train.fast_path=off").compile and path(short, "train.fast_path=on").compile
    assert path(short, "train.compile=true").compile and not path(short, "train.compile=true").channels_last
