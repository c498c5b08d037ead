"""The study script end to end (``benchmarks/science.py --quick``) and its verdict rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from claims import claim_lambda, claim_rho, claim_steps, seed_spread  # noqa: E402

VERDICTS = {"reproduced", "not reproduced", "partly reproduced", "not testable", "measured"}


def _cell(lmbda, rho, bpp, psnr, lpips, fd=10.0):
    return {"lmbda": lmbda, "rho": rho, "bpp": bpp, "psnr-rgb": psnr, "stlpips-vgg": lpips, "fd-stlpips-vgg": fd}


def test_a_claim_must_exceed_the_seed_spread():
    grid = [_cell(0.01, 0.0, 0.30, 30.0, 0.20), _cell(0.01, 0.9, 0.31, 29.0, 0.15, 8.0)]
    small = seed_spread({"grid": grid, "seed1": [_cell(0.01, 0.0, 0.30, 29.9, 0.199)]})
    assert small["psnr-rgb"] == pytest.approx(0.1)
    assert claim_rho(grid, small)["verdict"] == "reproduced"
    large = seed_spread({"grid": grid, "seed1": [_cell(0.01, 0.0, 0.30, 31.5, 0.26)]})
    assert claim_rho(grid, large)["verdict"] == "not reproduced"  # the effect is within the noise
    beyond = [*grid[:1], _cell(0.01, 0.5, 0.30, 29.5, 0.15), _cell(0.01, 0.9, 0.30, 29.0, 0.17)]
    result = claim_rho(beyond, small)  # 0 -> 0.5 helps, 0.5 -> 0.9 hurts ST-LPIPS
    assert result["verdict"] == "partly reproduced" and [s["holds"] for s in result["steps"]] == [True, False]
    realism = [grid[0], _cell(0.01, 0.9, 0.30, 29.0, 0.20, fd=5.0)]  # ST-LPIPS flat, fd better
    assert claim_rho(realism, small)["verdict"] == "partly reproduced"
    assert claim_rho([grid[0], _cell(0.01, 0.9, 0.30, 29.0, 0.20, fd=10.0)], small)["verdict"] == "not reproduced"


def test_lambda_must_order_the_rate_at_every_rho():
    cells = [_cell(0.01, 0.0, 0.3, 30, 0.2), _cell(0.1, 0.0, 0.2, 29, 0.25),
             _cell(0.01, 0.9, 0.3, 29, 0.15), _cell(0.1, 0.9, 0.31, 28, 0.2)]
    result = claim_lambda(cells, {}, {}, {})
    assert result["verdict"] == "not reproduced" and "ρ 0.9: NOT monotone" in result["detail"]


def test_few_step_claim_compares_the_gap_to_each_models_best():
    def rows(psnrs):
        return [{"steps": s, "gamma": 0.0, "psnr-rgb": p} for s, p in zip((1, 4, 65), psnrs, strict=True)]

    assert claim_steps({"x": rows([29.8, 30.0, 30.1]), "eps": rows([15.0, 22.0, 29.0])}, {})["verdict"] == "reproduced"
    assert claim_steps({"x": rows([20.0, 24.0, 30.0]), "eps": rows([15.0, 22.0, 29.0])},
                       {})["verdict"] == "not reproduced"


@pytest.mark.slow
@pytest.mark.timeout(2400)  # 9 min alone on 2 cores, 14 beside another test file (pytest -n 2)
def test_quick_study_runs_end_to_end(tmp_path):
    from shards.devcorpus import build_corpus

    build_corpus(tmp_path / "corpus", packages=(), max_shorter=256, split_val=0.3, workers=1)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "science.py"), "--quick", "--shards",
                           str(tmp_path / "corpus" / "shards"), "--work", str(tmp_path / "work"), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "science.json").read_text())
    assert len(data["claims"]) == 6 and {c["verdict"] for c in data["claims"]} <= VERDICTS
    assert {r["steps"] for r in data["sweep"]["x"]} == {1, 2} and set(data["sweep"]) == {"x", "eps"}
    assert {(c["lmbda"], c["rho"]) for c in data["cells"]["grid"]} == {(0.01, 0.0), (0.01, 0.9), (0.2, 0.0),
                                                                       (0.2, 0.9)}
    assert len(data["cells"]["scratch"]) == len(data["cells"]["seed1"]) == len(data["cells"]["eps"]) == 1
    report = (out / "science.md").read_text()
    assert "| 1 | X-param decodes near its best" in report and "BD-rate against AVIF" in report
    assert (out / "plots" / "steps-x-vs-eps.png").is_file() and (out / "plots" / "rd-psnr-rgb.png").is_file()
    # resumable: a second run trains and measures nothing again
    kept = [p for p in (tmp_path / "work").rglob("*") if p.suffix in (".json", ".safetensors", ".pt")
            and p.name not in ("study.json", "seconds.json") and "registry" not in p.parts and "prefect" not in p.parts]
    stamps = {p: p.stat().st_mtime_ns for p in kept}
    assert any(p.name == "model.safetensors" for p in kept) and any(p.name == "sweep.json" for p in kept)
    again = subprocess.run([sys.executable, str(REPO / "benchmarks" / "science.py"), "--quick", "--shards",
                            str(tmp_path / "corpus" / "shards"), "--work", str(tmp_path / "work"), "--out", str(out)],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in kept} == stamps
