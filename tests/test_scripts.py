"""The scripts as a user runs them: every one parses its arguments (``--help``, unknown flags and bad
numbers refused), ``demo.py --fresh`` removes only what the demo made, and nothing a script starts
outlives it."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO


def _run(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.mark.parametrize(("script", "args", "message"), [
    ("scripts/demo.py", ["--fersh"], "unrecognized arguments: --fersh"),
    ("scripts/train_family.py", ["--only", "small-q9"], "--only: no member small-q9"),
    ("scripts/train_family.py", ["--only"], "argument --only: expected at least one argument"),
    ("scripts/train_family_gpu.py", ["train", "--shards", "s", "--out", "o", "--members", "small-q1-perceptual"],
     "--members: no distortion member small-q1-perceptual"),
    ("scripts/train_family_gpu.py", ["compare", "tests/assets"], "tests/assets: no gpu-family-raw.json"),
    ("benchmarks/capacity.py", ["--quick", "--budget-min", "-1"], "argument --budget-min: -1 is outside"),
    ("benchmarks/capacity.py", ["--quick", "--shares", "nan", "0", "0"], "argument --shares: nan is outside"),
    ("benchmarks/capacity.py", ["--quick", "--limit", "-5"], "argument --limit: -5 is outside"),
    ("benchmarks/capacity.py", ["--quick", "--threads", "0"], "argument --threads: 0 is outside"),
    ("benchmarks/capacity.py", ["--quick", "--shards", "tests/assets/nothing"], "no shard manifest"),
    ("benchmarks/perceptual_decoder.py", ["--shards", "s", "--variants", "1.5:stlpips-alex"],
     "--variants: each ρ must be in (0, 1]"),
    ("benchmarks/perceptual_decoder.py", ["--shards", "s", "--variants", "0.9:resnet"], "each network one of"),
    ("benchmarks/perceptual_decoder.py", ["--shards", "s", "--variants", "0.9"], "is not a comma-separated list"),
    ("benchmarks/context_model.py", ["--shards", "tests/assets/tiny-shard", "--members", "small-q1-perceptual"],
     "--members: no distortion member small-q1-perceptual"),
    ("benchmarks/context_model.py", ["--shards", "tests/assets/nothing"], "tests/assets/nothing: no shard manifest"),
    ("benchmarks/context_model.py", ["--shards", "s", "--steps", "0"], "argument --steps: 0 is outside"),
    ("benchmarks/family_heldout.py", ["--models", "small-q1,small-q9"], "--models: small-q9 not in the shipped family"),
    ("benchmarks/family_heldout.py", ["--shards", "tests/assets/nothing"], "tests/assets/nothing: no shard manifest"),
    ("benchmarks/family_heldout.py", ["--limit", "-1"], "argument --limit: -1 is outside"),
    ("benchmarks/distilled_decoder.py", ["--student", "tests/assets"], "--student tests/assets: not a codec"),
    ("benchmarks/distilled_decoder.py", ["--student", "small-q1"], "--student small-q1: no distill.json nor a"),
    ("benchmarks/variable_rate.py", ["--model", "small-q1"], "--model: small-q1 is a fixed-rate model"),
    ("benchmarks/variable_rate.py", ["--model", "tests/assets/nothing"], "--model: "),
    ("benchmarks/paper_recipe.py", ["--runs", "lr1"], "unknown runs ['lr1']"),
    ("benchmarks/paper_recipe.py", ["--frozen-share", "1.5"], "argument --frozen-share: 1.5 is outside"),
    ("benchmarks/paper_recipe.py", ["--runs", "staged", "--steps", "100", "--autoencoder-fraction", "0.9"],
     "each stage needs at least 20 steps"),
    ("benchmarks/paper_recipe.py", ["--runs", "staged", "--steps", "100", "--autoencoder-steps", "90"],
     "a first stage of 90 leaves 10"),
    ("benchmarks/paper_recipe.py", ["--shards", "tests/assets/nothing"], "tests/assets/nothing: no shard manifest"),
])
def test_scripts_refuse_bad_arguments_before_any_work(script, args, message):
    r = _run(script, *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_distillation_benchmark_compares_students_of_one_teacher_only(tmp_path):
    for name, teacher, gamma in (("a", "small-q1-perceptual", 0.8), ("b", "small-q1-perceptual", 0.8),
                                 ("c", "small-q0-perceptual", 0.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "distill.json").write_text(json.dumps({"distilled_from": teacher,
                                                                 "distill": {"student_gamma": gamma}}))
    same = _run("benchmarks/distilled_decoder.py", "--student", str(tmp_path / "a"), "--student", str(tmp_path / "b"))
    assert same.returncode == 2 and "two students start from the same state" in same.stderr, same.stderr
    mixed = _run("benchmarks/distilled_decoder.py", "--student", str(tmp_path / "a"), "--student", str(tmp_path / "c"))
    assert mixed.returncode == 2 and "the students have different teachers" in mixed.stderr, mixed.stderr
    # shipped students by name: their records come from the checkpoints' metadata
    shipped = _run("benchmarks/distilled_decoder.py", "--student", "small-q1-perceptual-1step",
                   "--student", "small-q0-perceptual-1step")
    assert shipped.returncode == 2, shipped.stderr
    assert "different teachers (small-q0-perceptual, small-q1-perceptual)" in shipped.stderr, shipped.stderr


@pytest.mark.parametrize("script", ["scripts/demo.py", "scripts/train_family.py", "scripts/train_family_gpu.py",
                                    "benchmarks/capacity.py", "benchmarks/perceptual_decoder.py",
                                    "benchmarks/context_model.py", "benchmarks/variable_rate.py",
                                    "benchmarks/distilled_decoder.py",
                                    "benchmarks/paper_recipe.py"])
def test_scripts_explain_their_arguments(script):
    r = _run(script, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr


@pytest.fixture
def demo(tmp_path, monkeypatch):
    monkeypatch.setenv("CDC_HOME", str(tmp_path / "home"))
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path / "runs" / "demo")
    return module


def test_pip_sources_hands_uv_what_pip_is_configured_with(tmp_path):
    """``make setup``'s uv reads no pip configuration: the script turns pip's into uv options, in
    pip's order, each source once (set in pip.conf and the environment alike), one index URL."""
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://mirror.example/simple\n"
                    "extra-index-url = file:///srv/a/simple file:///srv/b/simple\nfind-links = /srv/wheels\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")},
           "PIP_CONFIG_FILE": str(conf), "PIP_FIND_LINKS": "/srv/wheels /srv/more"}

    def sources(**extra: str) -> list[str]:
        return subprocess.run([str(REPO / "scripts" / "pip-sources.sh"), sys.executable], capture_output=True,
                              text=True, env={**env, **extra}, timeout=60, check=True).stdout.split()

    out = sources()
    assert sorted(out) == sorted(["--default-index=https://mirror.example/simple", "--index=file:///srv/a/simple",
                                  "--index=file:///srv/b/simple", "--find-links=/srv/wheels",
                                  "--find-links=/srv/more"])
    assert out.index("--index=file:///srv/a/simple") < out.index("--index=file:///srv/b/simple")
    # one index URL, the environment's over the file's, as for pip
    assert [s for s in sources(PIP_INDEX_URL="https://env.example/simple") if s.startswith("--default-index")] == [
        "--default-index=https://env.example/simple"]


def test_fresh_refuses_a_demo_folder_holding_a_users_file(demo):
    demo.OUT.mkdir(parents=True)
    (demo.OUT / "eval").mkdir()
    (demo.OUT / "my.ipynb").write_text("notes")
    with pytest.raises(SystemExit, match=r"holds files the demo did not make \(my\.ipynb\): move them away first"):
        demo.start_fresh()
    assert (demo.OUT / "my.ipynb").read_text() == "notes" and (demo.OUT / "eval").is_dir()


def test_fresh_forgets_only_the_demos_runs_and_models(demo, tmp_path):
    import mlflow
    from conftest import tiny_codec

    from cdc.registry.catalog import list_versions, register
    from cdc.registry.tracking import setup_mlflow
    from cdc.zoo.checkpoint import save_codec

    model = save_codec(tiny_codec(), tmp_path / "model")
    (tmp_path / "user-file").write_text("kept")
    for experiment, key in (("cdc-grid", "mine"), (demo.EXPERIMENT, "demo")):
        setup_mlflow(experiment)
        with mlflow.start_run():
            register(model, {"shards": {"bpp": 0.3, "psnr-rgb": 20.0}}, "shards", key, 3)
    assert len(list_versions()) == 2
    demo.OUT.mkdir(parents=True)
    (demo.OUT / "summary.json").write_text("{}")
    demo.start_fresh()
    left = list_versions()
    assert [v.tags["cell_key"] for v in left] == ["mine"]  # the user's grid's model stays
    assert not demo.OUT.exists() and (tmp_path / "user-file").read_text() == "kept"
    assert mlflow.MlflowClient().get_experiment_by_name("cdc-grid") is not None


@pytest.mark.slow
def test_a_scripts_prefect_server_goes_with_it_even_after_kill_9(tmp_path):
    """What the demo runs its flows on: killed with SIGKILL, the script leaves no server behind."""
    code = ("import sys, time; from pathlib import Path; from pipelines.local_server import temporary_server\n"
            f"with temporary_server(Path({str(tmp_path / 'prefect')!r}), Path({str(tmp_path / 'log')!r})) as url:\n"
            "    print(url, flush=True); time.sleep(600)\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    script = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    url = script.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), (tmp_path / "log").read_text()[-2000:]
    with urllib.request.urlopen(f"{url}/health", timeout=10) as answer:
        assert json.loads(answer.read()) is True
    script.send_signal(signal.SIGKILL)
    script.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
        except OSError:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the Prefect server at {url} outlived its script")


@pytest.mark.slow
def test_family_fine_tune_on_a_budget_returns_members_and_compares_them(tmp_path):
    """Both halves of ``train_family_gpu.py`` (here on the CPU, a few steps): the train half exports a
    loadable member with its record; the compare half measures it beside the shipped one."""
    from conftest import photo
    from PIL import Image

    from shards.build import build
    from shards.process import BuildConfig

    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        Image.fromarray(photo("astronaut", (256 + 16 * i, 320))).save(src / f"{i}.png")
    build([str(src)], tmp_path / "shards", BuildConfig(split_val=0.4))
    env = {**os.environ, "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(), "CDC_DATA": str(tmp_path / "cache")}
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "train_family_gpu.py"), "train", "--shards",
                        str(tmp_path / "shards"), "--members", "small-q0", "--first-steps", "4", "--batch", "2",
                        "--workers", "0", "--work", str(tmp_path / "work"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    raw = json.loads((out / "gpu-family-raw.json").read_text())
    assert list(raw["members"]) == ["small-q0"] and raw["members"]["small-q0"]["steps"] == 4
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "train_family_gpu.py"), "compare", str(out),
                        "--shards", str(tmp_path / "shards"), "--limit", "1", "--results", str(tmp_path / "r.json")],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    row = result["members"][0]
    assert row["name"] == "small-q0" and row["shipped"]["bpp"] > 0 and row["tuned"]["psnr-rgb"] > 10
    assert "| `small-q0` | 0.09 | 4 |" in r.stdout


def test_the_family_ships_a_one_step_student_in_rounds_each_from_the_last(tmp_path, monkeypatch):
    """``train_family.py``'s student member: its distillation commands (each round continues the last, from
    the shipped teacher), its card decode and recipe, and its wall clock from the distillation records."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    family = importlib.import_module("train_family")
    student = next(m for m in family.FAMILY if m.distil_rounds)
    assert student.decodes == ((1, student.student_gamma),) and family.DECODES[0.9][0] == (1, 0.0)
    dirs = family.distil_dirs(student, tmp_path)
    assert dirs[-1] == tmp_path / student.name and len(dirs) == len(student.distil_rounds)
    commands = []

    def fake_run(cmd, check):  # records the rounds, writes what a finished round leaves
        commands.append(cmd)
        out = Path(cmd[cmd.index("--output") + 1])
        out.mkdir()
        (out / "distill.json").write_text(json.dumps({"target_seconds": 60.0, "curve": [{"seconds": 540.0}]}))

    monkeypatch.setattr(family, "subprocess", types.SimpleNamespace(run=fake_run))
    family.train(student, tmp_path)
    assert [c[c.index("--teacher") + 1] for c in commands] == [student.init_from] * len(dirs)
    assert [c[c.index("--init") + 1] if "--init" in c else None for c in commands] == [None, *map(str, dirs[:-1])]
    assert [int(c[c.index("--seed") + 1]) for c in commands] == [seed for *_, seed in student.distil_rounds]
    family.train(student, tmp_path)  # finished rounds are not run again
    assert len(commands) == len(dirs)
    assert sum(family.training_minutes(d) for d in dirs) == pytest.approx(10.0 * len(dirs))
    recipe = family.distil_recipe(student, 30.0)
    assert f"in {len(dirs)} rounds, each from the last" in recipe and "30 min" in recipe
    single = next(m for m in family.FAMILY if len(m.distil_rounds) == 1)  # a student of one round says so
    assert "in one round: " in family.distil_recipe(single, 30.0)
    assert [m.init_from for m in family.FAMILY if m.distil_rounds] == ["small-q1-perceptual", "small-q0-perceptual"]
