"""The grid summary's checks: lambda orders the rate, rho helps perception, CDC vs a baseline (pure functions)."""

from __future__ import annotations

from pipelines.summary import grid_checks, rate_spread_warning


def test_equal_or_inverted_rates_across_lambdas_are_flagged():
    warning = rate_spread_warning([(0.01, 0, 0.0862), (0.04, 0, 0.0862), (0.01, 0.9, 0.0865)])
    assert warning and "0.0862 bpp" in warning and "under-trained" in warning
    inverted = rate_spread_warning([(0.01, 0, 0.20), (0.04, 0, 0.25), (0.01, 0.9, 0.3), (0.04, 0.9, 0.1)])
    assert inverted and "rho 0:" in inverted and "rho 0.9" not in inverted


def test_ordered_rates_one_lambda_or_missing_rates_are_not_flagged():
    assert rate_spread_warning([(0.01, 0, 0.30), (0.04, 0, 0.12)]) is None
    assert rate_spread_warning([(0.01, 0, 0.30), (0.01, 0.9, 0.30)]) is None  # one lambda, several rhos
    assert rate_spread_warning([(0.01, 0, 0.30), (0.04, 0, None)]) is None


def test_grid_checks_report_each_claim():
    points = [{"lmbda": 0.01, "rho": 0.0, "bpp": 0.30, "psnr-rgb": 27.0, "stlpips-vgg": 0.30},
              {"lmbda": 0.04, "rho": 0.0, "bpp": 0.12, "psnr-rgb": 24.0, "stlpips-vgg": 0.40},
              {"lmbda": 0.01, "rho": 0.9, "bpp": 0.28, "psnr-rgb": 26.0, "stlpips-vgg": 0.20}]
    jpeg = {"bpp": [0.1, 0.2, 0.4], "psnr-rgb": [22.0, 25.0, 28.0], "stlpips-vgg": [0.5, 0.4, 0.3]}
    checks = {claim: (ok, detail) for claim, ok, detail in grid_checks(points, {"JPEG": jpeg})}
    assert checks["lambda orders the rate within each rho"] == (True, "")
    assert checks["at equal lambda, the larger rho has the lower ST-LPIPS-VGG"][0] is True
    ok, detail = checks["a CDC point beats JPEG at equal bpp (PSNR or ST-LPIPS-VGG)"]
    assert ok and "lambda 0.04 rho 0: PSNR 24.00 vs 22.79 dB" in detail
    worse = [dict(p, **{"psnr-rgb": 10.0, "stlpips-vgg": 0.9}) for p in points]
    assert grid_checks(worse, {"JPEG": jpeg})[-1][1] is False
    far = [dict(p, bpp=5.0) for p in points]
    assert grid_checks(far, {"JPEG": jpeg})[-1][1] is None  # outside JPEG's range: not testable
