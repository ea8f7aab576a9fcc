"""The tenants_scale benchmark's pure parts: weighted fairness figures and targets."""

from __future__ import annotations

import pytest

from benchmarks import tenants_scale


def test_weight_shares_are_exact_when_served_in_proportion_to_weight() -> None:
    weights = {"a": 1, "b": 2, "c": 1, "d": 2}
    stored = {"a": 10.0, "b": 20.0, "c": 10.0, "d": 20.0}
    out = tenants_scale.weight_shares(stored, weights)
    assert out["weighted_jain"] == 1.0
    assert out["max_weight_error"] == 0.0
    assert out["classes"]["2"]["served_share"] == pytest.approx(2 / 3, abs=1e-4)


def test_weight_shares_report_equal_service_as_unfair_to_the_heavy_class() -> None:
    weights = {"a": 1, "b": 2}
    out = tenants_scale.weight_shares({"a": 10.0, "b": 10.0}, weights)
    # Served 1/2 each against weight shares 1/3 and 2/3.
    assert out["classes"]["1"]["error"] == pytest.approx(0.5, abs=1e-4)
    assert out["classes"]["2"]["error"] == pytest.approx(0.25, abs=1e-4)
    assert out["max_weight_error"] == pytest.approx(0.5, abs=1e-4)
    assert out["weighted_jain"] == pytest.approx(0.9, abs=1e-4)  # 15^2 / (2 * (10^2 + 5^2))


def test_a_tenant_never_served_counts_as_zero() -> None:
    out = tenants_scale.weight_shares({"a": 5.0}, {"a": 1, "b": 1})
    assert out["weighted_jain"] == 0.5


def _medians(cpu: float, hot: float, idle: float, rss: float) -> dict:
    return {
        "after": {
            "scheduler_idle": idle,
            "broker_idle": 0.03,
            "broker_baseline": 0.02,
            "scheduler_cpu_us_per_reading": cpu,
            "hot10_cpu_us_per_reading": hot,
            "rss_peak_mb": rss,
        }
    }


def test_targets_compare_the_largest_count_with_the_smallest() -> None:
    med = {"10": _medians(40, 40, 0.001, 75), "10000": _medians(70, 50, 0.02, 250)}
    fair = {"backlogged": 1000, "weighted_jain": 0.995, "max_weight_error": 0.06}
    out = tenants_scale.targets(med, {"10": 0.2, "10000": 61.0}, fair, "after")
    met = {k: v["met"] for k, v in out.items()}
    assert met == {
        "scheduler idle at 10000 tenants <= 1 % of a core": False,
        "broker idle at 10000 tenants <= 1.5x no-consumer baseline": True,
        "scheduler CPU per reading 10000/10 tenants (spread) <= 1.5": False,
        "scheduler CPU per reading 10000/10 tenants (10 hot) <= 1.5": True,
        "scheduler RSS at 10000 tenants <= 200 MB": False,
        "provisioning 10,000 tenants <= 60 s": False,
        "weighted Jain with 1000 backlogged >= 0.99": True,
        "weights within 5%": False,
    }
    assert out["scheduler CPU per reading 10000/10 tenants (spread) <= 1.5"]["value"] == 1.75


def test_targets_without_10000_or_fairness_leave_those_out() -> None:
    med = {"10": _medians(40, 40, 0.001, 75), "100": _medians(40, 40, 0.001, 75)}
    out = tenants_scale.targets(med, {"10": 0.2, "100": 2.0}, None, "after")
    assert not any("provisioning" in k or "Jain" in k for k in out)
    assert all(v["met"] for k, v in out.items() if "broker" not in k)
