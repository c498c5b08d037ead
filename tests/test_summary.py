"""The grid summary's check that the cells' rates separate (a pure function, no servers)."""

from __future__ import annotations

from pipelines.summary import rate_spread_warning


def test_equal_rates_across_lambdas_are_flagged():
    warning = rate_spread_warning([(0.01, 0.0862), (0.04, 0.0862), (0.01, 0.0865)])
    assert warning and "0.0862 bpp" in warning and "under-trained" in warning


def test_separated_rates_one_lambda_or_missing_rates_are_not_flagged():
    assert rate_spread_warning([(0.01, 0.30), (0.04, 0.12)]) is None
    assert rate_spread_warning([(0.01, 0.30), (0.01, 0.30)]) is None  # one lambda, several rhos
    assert rate_spread_warning([(0.01, 0.30), (0.04, None)]) is None
