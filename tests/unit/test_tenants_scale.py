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


def test_targets_without_fairness_leave_it_out_and_time_provisioning_at_the_largest_count() -> None:
    med = {"10": _medians(40, 40, 0.001, 75), "100": _medians(40, 40, 0.001, 75)}
    out = tenants_scale.targets(med, {"10": 0.2, "100": 2.0}, None, "after")
    assert not any("Jain" in k for k in out)
    assert out["provisioning 100 tenants <= 60 s"] == {"value": 2.0, "met": True}
    assert all(v["met"] for k, v in out.items() if "broker" not in k)


def test_provision_only_targets_read_the_largest_count() -> None:
    out = tenants_scale.provision_targets({"1000": 8.2, "10000": 78.3})
    assert out == {"provisioning 10,000 tenants <= 60 s": {"value": 78.3, "met": False}}


def test_the_same_devices_ratio_divides_by_the_small_count_s_drain_over_as_many_devices() -> None:
    small = {**_medians(40, 40, 0.001, 75)["after"], "same_devices_cpu_us_per_reading": 80.0}
    big = _medians(100, 50, 0.001, 150)["after"]
    assert (
        tenants_scale.same_devices_ratio({"10": {"after": small}, "10000": {"after": big}}, "after")
        == 1.25
    )


def test_weight_shares_give_the_plain_figures_too() -> None:
    weights = {"a": 1, "b": 2}
    out = tenants_scale.weight_shares({"a": 50.0, "b": 100.0}, weights)
    assert out["weighted_jain"] == 1.0
    assert out["plain_jain"] == pytest.approx(0.9, abs=1e-4)  # 150^2 / (2 * (50^2 + 100^2))
    assert out["classes"]["2"]["readings"] == 100
    assert out["classes"]["1"]["mean_per_tenant"] == 50.0


def test_a_round_is_the_quantum_times_the_sum_of_the_weights() -> None:
    weights = {tenants_scale.tenant_ids(1000)[i]: tenants_scale.weight_of(i) for i in range(1000)}
    assert tenants_scale.round_readings(weights, 50) == 75_000


def test_the_backlog_outlasts_the_rounds_plus_the_prefetch_in_whole_bundles() -> None:
    # 5 turns of 50 x 2, plus 100 bundles of 5 buffered by the prefetch.
    assert tenants_scale.backlog_for(2, 50, 4, 100, 5) == 1000
    assert tenants_scale.backlog_for(1, 50, 4, 100, 5) == 750
    # 4 turns of 50 + 10 bundles of 30 = 500, rounded up to whole bundles of 30.
    assert tenants_scale.backlog_for(1, 50, 3, 10, 30) == 510
    # Heavier tenants need more: they spend 2x per round.
    assert (
        tenants_scale.backlog_for(2, 50, 4, 100, 5) - tenants_scale.backlog_for(1, 50, 4, 100, 5)
        == 5 * 50
    )


def test_nearest_samples_pick_each_whole_round_and_skip_rounds_not_reached() -> None:
    totals = [0.0, 40.0, 90.0, 110.0, 190.0, 260.0]
    assert tenants_scale.nearest_samples(totals, 100, 4) == {1: 2, 2: 4, 3: 5}
    # 260 is nearer 300 than 250: round 3 counts, round 4 (400) is not reached.
    assert tenants_scale.nearest_samples([0.0, 20.0], 100, 2) == {}


def test_bundles_fill_every_tenant_in_whole_interleaved_bundles() -> None:
    from fairway.kernel import topology
    from fairway.kernel.contract import tenant_readings

    items = list(tenants_scale.bundles({"a": 10, "b": 20}, 5, "x", 1000.0))
    assert [key for _, key, _, _ in items] == ["a", "b", "a", "b", "b", "b"]
    assert all(exchange == topology.TENANTS for exchange, _, _, _ in items)
    assert all(props.headers == {topology.READINGS_HEADER: 5} for *_, props in items)
    readings = [tenant_readings(body) for _, _, body, _ in items]
    assert all(len(x) == 5 for x in readings)
    ids = [x["id"] for bundle in readings for x in bundle if x["tenant"] == "b"]
    assert len(set(ids)) == 20
