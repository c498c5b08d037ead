"""The grid as a Prefect deployment against real servers: Prefect server + process worker + MLflow server.

The servers are started by `scripts/serve.sh` (what `make serve` runs) on free loopback ports with
state in a temporary folder, and stopped by PID at teardown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, free_port, photo
from PIL import Image

pytestmark = pytest.mark.slow

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    home = tmp_path_factory.mktemp("serve")
    env = {**os.environ, "CDC_HOME": str(home), "PREFECT_PORT": str(free_port()), "MLFLOW_PORT": str(free_port()),
           "BIN": str(BIN), "CDC_MODEL_CACHE": str(home / "model-cache")}
    started = subprocess.run([str(REPO / "scripts" / "serve.sh"), "start"], env=env, capture_output=True, text=True,
                             timeout=600)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        env.update(PREFECT_API_URL=f"http://127.0.0.1:{env['PREFECT_PORT']}/api",
                   MLFLOW_TRACKING_URI=f"http://127.0.0.1:{env['MLFLOW_PORT']}")
        corpus = home / "corpus"
        corpus.mkdir()
        for name in PHOTOS:
            Image.fromarray(photo(name)).save(corpus / f"{name}.png")
        yield env, home
    finally:
        subprocess.run([str(REPO / "scripts" / "serve.sh"), "stop"], env=env, timeout=120)
        for pidfile in (home / "serve").glob("*.pid"):
            pytest.fail(f"{pidfile.name} left behind")


def run_grid(env: dict, home: Path, lmbdas: str, cell_overrides: str = "{}") -> subprocess.CompletedProcess:
    params = {"grid": {"lmbdas": json.loads(lmbdas), "rhos": [0]},
              "data": {"corpus": [str(home / "corpus")], "patch_size": 256, "split_val": 0.3},
              "training": {"preset": "tiny", "cell_train_steps": 10, "warmup_train_steps": 10,
                           "cell_overrides": json.loads(cell_overrides)},
              "evaluation": {"limit": 2, "baselines": ["jpeg"]},
              "execution": {"output_dir": str(home / "grid"), "retries": 1}}
    cmd = [str(BIN / "prefect"), "deployment", "run", "train-grid/local", "--watch"]
    for key, value in params.items():  # each group as JSON, as a user types it
        cmd += ["--param", f"{key}={json.dumps(value)}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, cwd=REPO)


def versions(env: dict) -> list:
    code = ("import json; from cdc.registry.catalog import list_versions;"
            "print(json.dumps([[v.name, v.version, v.tags, list(v.aliases)] for v in list_versions()]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_grid_deployment_registers_models(services, tmp_path):
    env, home = services
    first = run_grid(env, home, "[0.01,0.05]")
    assert first.returncode == 0 and "Completed" in first.stdout, first.stdout[-3000:] + first.stderr[-3000:]
    registered = versions(env)
    assert [(name, version) for name, version, _, _ in registered] == [("cdc-x-rho0", "1"), ("cdc-x-rho0", "2")]
    by_lmbda = {tags["lmbda"]: (version, tags, aliases) for _, version, tags, aliases in registered}
    assert set(by_lmbda) == {"0.01", "0.05"}
    for lmbda, (_, tags, _) in by_lmbda.items():
        assert tags["rho"] == "0.0" and tags["prediction"] == "sample" and tags["preset"] == "tiny"
        for key in ("decode_steps", "shards.bpp", "shards.psnr-rgb", "shards.ms-ssim-rgb", "shards.stlpips-vgg",
                    "shards.fd-stlpips-vgg", "shards_fingerprint", "code_version", "cell_key", "fingerprint"):
            assert tags.get(key), (lmbda, key)
    aliases = {a: v for v, _, al in by_lmbda.values() for a in al}
    ordered = sorted(by_lmbda.values(), key=lambda t: float(t[1]["shards.bpp"]))
    assert aliases["q1"] == ordered[0][0] and aliases["q2"] == ordered[1][0] and "champion" in aliases

    # the registered model serves: CLI through the registry, and the pyfunc flavour
    Image.fromarray(photo("coffee", (96, 128))).save(tmp_path / "coffee.png")
    cdc = [sys.executable, "-m", "cdc"]
    r = subprocess.run([*cdc, "compress", str(tmp_path / "coffee.png"), "-m", "models:/cdc-x-rho0@q2", "-o",
                        str(tmp_path / "c.cdc")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*cdc, "decompress", str(tmp_path / "c.cdc"), "-m", "models:/cdc-x-rho0@q2", "-o",
                        str(tmp_path / "d.png")], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and Image.open(tmp_path / "d.png").size == (128, 96), r.stderr
    r = subprocess.run([*cdc, "compress", str(tmp_path / "coffee.png"), "-m",
                        "best:bpp<=10,objective=distortion,dataset=shards", "-o", str(tmp_path / "b.cdc")], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    listing = subprocess.run([*cdc, "models", "list", "--dataset", "shards"], env=env, capture_output=True, text=True)
    assert "cdc-x-rho0" in listing.stdout and "q1" in listing.stdout
    code = ("import mlflow, numpy as np; from cdc.registry.tracking import configure_tracking; configure_tracking();"
            "m = mlflow.pyfunc.load_model('models:/cdc-x-rho0@q1');"
            "import io, pandas as pd; from PIL import Image;"
            "f = io.BytesIO(); Image.new('RGB', (50, 40)).save(f, 'PNG');"
            "out = m.predict(pd.DataFrame({'image': [f.getvalue()]}));"
            "print(Image.open(io.BytesIO(out['reconstruction'][0])).size, out['bpp'][0] > 0, len(out['cdc'][0]) > 0);"
            "info = mlflow.models.get_model_info('models:/cdc-x-rho0@q1'); flavor = info.flavors['python_function'];"
            "print('from-code' if flavor.get('model_code_path') and 'python_model' not in flavor else flavor,"
            "      info.saved_input_example_info is not None)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "(50, 40) True True" in r.stdout, r.stderr[-2000:]
    assert "from-code True" in r.stdout, r.stdout  # no CloudPickle in the registry; an input example

    # a rerun registers nothing new
    again = run_grid(env, home, "[0.01,0.05]")
    assert again.returncode == 0, again.stdout[-3000:]
    assert len(versions(env)) == 2
    assert (home / "grid" / "summary.md").read_text().count("skipped (registered)") == 2

    # a cell made to fail while it trains (its data watchdog gives up at once) is retried and reported;
    # the others are unaffected
    third = run_grid(env, home, "[0.01,0.05,0.1]", cell_overrides='{"0.1/0": ["train.data_timeout_s=0.000001"]}')
    assert third.returncode == 0, third.stdout[-3000:]
    summary = (home / "grid" / "summary.md").read_text()
    assert "| lmbda0.1-rho0 | 0.1 | 0 | failed:" in summary and "no training batch for 1e-06 s" in summary
    assert "AwaitingRetry" in third.stdout and summary.count("skipped (registered)") == 2
    assert len(versions(env)) == 2

    # the output folder removed (as `scripts/demo.py --fresh` did) while the registry keeps its cells:
    # a registered cell asked for again is trained and evaluated again, never a missing-results traceback
    import shutil

    shutil.rmtree(home / "grid")
    fourth = run_grid(env, home, "[0.01]")
    assert fourth.returncode == 0, fourth.stdout[-3000:] + fourth.stderr[-3000:]
    summary = (home / "grid" / "summary.md").read_text()
    assert "skipped (registered)" not in summary and len(versions(env)) == 3
    assert (home / "grid" / "eval" / "CDC_lmbda0.01-rho0.json").is_file()
