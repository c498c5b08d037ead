"""Infrastructure: lint the Dockerfile and shell scripts, validate compose, run the Slurm launch logic
for real as two "nodes" on localhost, render Kubernetes manifests, and use a real PostgreSQL as
MLflow's backend store."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import version as version_of
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port

BIN = Path(sys.executable).parent
SHELL_SCRIPTS = [*REPO.glob("infra/**/*.sh"), *REPO.glob("infra/slurm/*.sbatch"), REPO / "scripts" / "serve.sh",
                 REPO / ".ci" / "run"]


def test_dockerfile_is_hadolint_clean():
    r = subprocess.run([str(BIN / "hadolint"), str(REPO / "Dockerfile")], capture_output=True,
                       text=True)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_shell_scripts_are_shellcheck_clean():
    r = subprocess.run([str(BIN / "shellcheck"), *map(str, SHELL_SCRIPTS)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.slow
@pytest.mark.compose
def test_compose_file_is_valid_and_demands_secrets(tmp_path):
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose (Debian package) is required; .ci/run installs it"
    env_file = tmp_path / ".env"
    env_file.write_text((REPO / "infra" / ".env.example").read_text().replace("PASSWORD=", "PASSWORD=from-env"))
    cmd = [compose, "-f", str(REPO / "infra" / "compose.yaml"), "--env-file", str(env_file), "--profile", "gpu"]
    r = subprocess.run([*cmd, "config"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    config = yaml.safe_load(r.stdout)
    assert set(config["services"]) == {"postgres", "minio", "buckets", "mlflow", "prefect-server", "worker", "trainer"}
    gpu = config["services"]["trainer"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    # with the example file as is (no passwords) compose refuses to start anything
    r = subprocess.run([compose, "-f", str(REPO / "infra" / "compose.yaml"), "--env-file",
                        str(REPO / "infra" / ".env.example"), "config"], capture_output=True, text=True)
    assert r.returncode != 0 and "set POSTGRES_PASSWORD" in r.stderr
    assert "PASSWORD" not in (REPO / "Dockerfile").read_text()


@pytest.mark.slow
def test_slurm_launch_logic_as_two_nodes_on_localhost(tmp_path):
    out = tmp_path / "run"
    base = {**os.environ, "SLURM_NNODES": "2", "CDC_HEAD_ADDR": "127.0.0.1", "CDC_PROCS_PER_NODE": "1",
            "CDC_OUTPUT_DIR": str(out), "CDC_ACCELERATE_CONFIG": "infra/accelerate/cpu.yaml",
            "CDC_MAIN_PORT": str(free_port()), "ACCELERATE": str(BIN / "accelerate"),
            "CDC_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    base.pop("MLFLOW_TRACKING_URI", None)
    args = ["--preset", "tiny", "--shards", str(REPO / "tests/assets/tiny-shard"), "--max-steps", "4",
            "train.sample_every=0"]
    nodes = [subprocess.Popen([str(REPO / "infra/slurm/launch-node.sh"), *args], env={**base, "SLURM_NODEID": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    logs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["replicas_in_sync"]


def test_rendered_slurm_and_kubernetes_jobs_carry_the_cell(tmp_path):
    from pipelines.cells import train_job
    from pipelines.launchers import KubernetesLauncher, SlurmLauncher

    job = train_job("lmbda0.05-rho0.9", tmp_path / "cell", shards="/data/shards", preset="paper", prediction="sample",
                    train_steps=1000, lmbda=0.05, rho=0.9, overrides=["train.lr=1e-4"], init_from=tmp_path / "warm",
                    tags={"cdc.cell_key": "abc123"}, experiment="cdc-grid")
    launcher = SlurmLauncher(nodes=2, gpus_per_node=4, cpus_per_task=32, mem="64G", partition="gpu", account="lab",
                             qos="high", sbatch_args=["--exclusive"])
    command = launcher.command(job)
    assert command[:2] == ["sbatch", "--parsable"] and command[-1] == str(REPO / "infra/slurm/train.sbatch")
    for option in ("--nodes=2", "--gpus-per-node=4", "--cpus-per-task=32", "--mem=64G", "--partition=gpu",
                   "--account=lab", "--qos=high", "--exclusive", f"--output={tmp_path / 'cell' / 'slurm-%j.out'}"):
        assert option in command
    env = launcher.environment(job)
    assert env["TRAIN_ARGS"] == f"--job {tmp_path / 'cell' / 'job.json'}"  # launch-node.sh adds --world-size
    assert env["CDC_OUTPUT_DIR"] == str(tmp_path / "cell") and env["CDC_REPO"] == str(REPO)
    # GPUs 0 (CPU partitions, clusters without GRES) omits the flag; unset resources stay the cluster's
    plain = SlurmLauncher().command(job)
    assert not any(a.startswith(("--gpus", "--cpus", "--mem", "--partition", "--account", "--qos")) for a in plain)
    assert job.spec.settings["loss.lmbda"] == 0.05 and job.spec.overrides == ("train.lr=1e-4",)
    # the template holds no ${...} placeholder in its #SBATCH lines: sbatch submits it as it is
    assert not re.findall(r"^#SBATCH .*\$", (REPO / "infra/slurm/train.sbatch").read_text(), re.M)
    manifest = yaml.safe_load(KubernetesLauncher(workers=3, gpus_per_node=8).manifest(job))
    assert manifest["kind"] == "PyTorchJob" and manifest["metadata"]["name"] == "lmbda0.05-rho0.9"
    specs = manifest["spec"]["pytorchReplicaSpecs"]
    assert specs["Worker"]["replicas"] == 3
    container = specs["Master"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["-m", "cdc.train", "--job", str(tmp_path / "cell" / "job.json"), "--world-size",
                                 "32"]
    assert "--num_processes 32" in container["command"][2]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    volumes = {v["name"]: v for v in specs["Master"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    template = json.loads((REPO / "infra/k8s/prefect-base-job-template.json").read_text())
    assert "gpus" in template["variables"]["properties"]
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    for path in [*REPO.glob("infra/k8s/*.yaml"), *REPO.glob("infra/k8s/helm/*.yaml")]:
        if path.name != "pytorchjob.yaml":
            assert list(yaml.safe_load_all(path.read_text())), path


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    assert found, "PostgreSQL server binaries are required (Debian package postgresql; .ci/run installs it)"
    return str(found[-1])


@pytest.fixture
def postgres(tmp_path):
    """A throwaway PostgreSQL cluster on loopback, run as the `postgres` system user."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="cdc-pg-"))  # pytest's tmp dirs are private to root
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    shutil.chown(data, "postgres")
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_pg, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    subprocess.run([*as_pg, _pg_bin("pg_ctl"), "-D", str(data), "-o", f"-p {port} -k {data} -h 127.0.0.1", "-l",
                    str(data / "log"), "-w", "start"], check=True, capture_output=True)
    try:
        for _ in range(50):
            if subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
                               "CREATE DATABASE mlflow"], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"  # SQLAlchemy 2.1 defaults to psycopg 3
    finally:
        subprocess.run([*as_pg, _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.root
def test_postgres_backed_mlflow_registry_round_trip(postgres, tmp_path):
    """Register a codec with MLflow on PostgreSQL, then load it back through models:/ and compare."""
    script = f"""
import mlflow, json
from cdc.zoo.checkpoint import save_codec, load_codec, fingerprint
from cdc.registry.catalog import register, resolve, list_versions
from conftest import tiny_codec
codec = tiny_codec()
save_codec(codec, {str(tmp_path / 'model')!r})
mlflow.set_experiment("pg")
with mlflow.start_run():
    v = register({str(tmp_path / 'model')!r}, {{"kodak": {{"bpp": 0.3, "psnr-rgb": 25.0}}}}, "kodak", "key1", 3)
checkpoint = resolve("models:/cdc-x-rho0@q1")
loaded = load_codec(checkpoint)
print(json.dumps([v.name, v.version, sorted(v.aliases), fingerprint(loaded) == fingerprint(codec),
                  len(list_versions()), (checkpoint.parents[1] / "requirements.txt").read_text().split()]))
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": postgres, "CDC_MODEL_CACHE": str(tmp_path / "cache"),
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"), "PYTHONPATH": str(REPO / "tests")}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    name, version, aliases, same, count, requirements = json.loads(r.stdout.strip().splitlines()[-1])
    assert (name, version, aliases, same, count) == ("cdc-x-rho0", "1", ["champion", "q1"], True, 1)
    # the model's environment: the release that wrote it (given, not inferred by loading the model)
    assert requirements == [f"mlflow=={version_of('mlflow')}", f"cdc-pipeline=={version_of('cdc-pipeline')}"]
