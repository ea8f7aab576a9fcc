"""Alert evaluation with hysteresis, against a brute-force model."""

from __future__ import annotations

import random
from typing import Any

import pytest

from fairway.domain.alerts import AlertEngine, Rule, RuleCache, evaluate_event, step, transitions

OPS = (">", ">=", "<", "<=")


def rule(op: str = ">", threshold: float = 10.0, hysteresis: float = 2.0, **kw: Any) -> Rule:
    fields = {"id": "r1", "tenant": "acme", "device": None, "metric": "temp"} | kw
    return Rule(op=op, threshold=threshold, hysteresis=hysteresis, **fields)


def holds(op: str, a: float, b: float) -> bool:
    return {">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[op]


def brute_force_states(r: Rule, values: list[float]) -> list[bool]:
    """State after each value, straight from the definition, O(n^2).

    Firing at i means: some j <= i where the comparison held, and no value in (j, i]
    back beyond the threshold by the hysteresis.
    """
    band = r.threshold - r.hysteresis if r.op in (">", ">=") else r.threshold + r.hysteresis
    states = []
    for i in range(len(values)):
        states.append(
            any(
                holds(r.op, values[j], r.threshold)
                and all(holds(r.op, values[k], band) for k in range(j + 1, i + 1))
                for j in range(i + 1)
            )
        )
    return states


@pytest.mark.parametrize("seed", range(40))
def test_random_sequences_fire_and_clear_exactly_at_the_crossings(seed: int) -> None:
    rng = random.Random(seed)
    r = rule(
        op=rng.choice(OPS),
        threshold=float(rng.randint(-3, 3)),
        hysteresis=rng.choice([0.0, 1.0, 2.0, 2.5]),
    )
    # A coarse grid makes values equal to the threshold and to the band edge common.
    values = [rng.randint(-8, 8) / 2 for _ in range(rng.randint(1, 120))]
    expected = brute_force_states(r, values)
    changes = [i for i in range(len(values)) if expected[i] != (expected[i - 1] if i else False)]

    state, got = False, []
    for i, v in enumerate(values):
        new = step(r, state, v)
        if new != state:
            got.append(i)
        state = new
    assert got == changes
    # transitions() reports the same crossings, alternating fire/clear, with the causing value.
    trans = transitions(r, False, values)
    assert [value for _, value in trans] == [values[i] for i in changes]
    assert [s for s, _ in trans] == [i % 2 == 0 for i in range(len(trans))]
    for firing, value in trans:
        if firing:
            assert holds(r.op, value, r.threshold)
        else:
            assert r.clears(value) and not holds(r.op, value, r.threshold)


def test_a_value_wobbling_inside_the_band_fires_once() -> None:
    r = rule(">", 10.0, 2.0)
    values = [9.0, 10.5, 9.5, 10.1, 8.1, 11.0, 8.0, 8.5, 10.0, 10.01]
    assert transitions(r, False, values) == [(True, 10.5), (False, 8.0), (True, 10.01)]


def test_the_edges_follow_the_operator() -> None:
    assert transitions(rule(">", 10, 2), False, [10, 10.5, 8.000001, 8]) == [
        (True, 10.5),
        (False, 8),
    ]
    assert transitions(rule(">=", 10, 2), False, [10, 8, 7.99]) == [(True, 10), (False, 7.99)]
    assert transitions(rule("<", 0, 1), False, [0, -1, 0.99, 1]) == [(True, -1), (False, 1)]
    assert transitions(rule("<=", 0, 1), False, [0, 1, 1.01]) == [(True, 0), (False, 1.01)]
    # Hysteresis 0: clears as soon as the comparison no longer holds.
    assert transitions(rule(">", 5, 0), False, [6, 5, 6]) == [(True, 6), (False, 5), (True, 6)]


def event(values: list[float], tenant: str = "acme", device: str = "d1") -> dict[str, Any]:
    return {
        "kind": "telemetry",
        "tenant": tenant,
        "device": device,
        "ts": "2026-01-01T00:00:00.000+00:00",
        "values": {"temp": values[-1]},
        "count": len(values),
        "min": {"temp": min(values)},
        "max": {"temp": max(values)},
    }


def test_a_spike_hidden_by_coalescing_fires_and_clears() -> None:
    r = rule(">", 10.0, 2.0)
    assert evaluate_event(r, False, event([5, 30, 6])) == [(True, 30), (False, 6)]
    assert evaluate_event(r, False, event([5, 30, 9])) == [(True, 30)]
    assert evaluate_event(r, True, event([12, 3, 11])) == [(False, 3), (True, 11)]
    assert evaluate_event(r, True, event([12, 9, 11])) == []
    low = rule("<", 0.0, 1.0)
    assert evaluate_event(low, False, event([2, -5, 3])) == [(True, -5), (False, 3)]


@pytest.mark.parametrize("seed", range(30))
def test_coalesced_batches_agree_with_every_reading_when_the_latest_is_decisive(
    seed: int,
) -> None:
    rng = random.Random(1000 + seed)
    r = rule(rng.choice(OPS), float(rng.randint(-2, 2)), rng.choice([0.0, 1.0, 2.0]))
    values = [rng.randint(-8, 8) / 2 for _ in range(200)]
    truth = brute_force_states(r, values)
    firing, i = False, 0
    while i < len(values):
        n = rng.randint(1, 6)
        batch = values[i : i + n]
        i += len(batch)
        changes = evaluate_event(r, firing, event(batch))
        assert len(changes) <= 2  # at most one excursion each way per batch
        for now, _ in changes:
            assert now != firing  # alternates: never fires twice, never clears twice
            firing = now
        latest = batch[-1]
        if r.fires(latest) or r.clears(latest):
            assert firing == truth[i - 1]


def test_single_reading_batches_are_exactly_the_per_reading_model() -> None:
    rng = random.Random(5)
    for op in OPS:
        r = rule(op, 1.0, 1.5)
        values = [rng.randint(-8, 8) / 2 for _ in range(300)]
        firing, got = False, []
        for v in values:
            for now, value in evaluate_event(r, firing, event([v])):
                got.append((now, value))
                firing = now
        assert got == transitions(r, False, values)


def test_engine_scopes_rules_to_tenant_and_device_and_keeps_state() -> None:
    everyone = rule(">", 10, 1, id="all")
    only_d2 = rule(">", 10, 1, id="d2", device="d2")
    other = rule(">", 10, 1, id="other", tenant="globex")
    engine = AlertEngine()
    rules = [everyone, only_d2, other]
    fired = engine.on_event(rules, event([20], device="d1"))
    assert [(a["rule"], a["device"], a["state"]) for a in fired] == [("all", "d1", "firing")]
    assert fired[0] == {
        "kind": "alert",
        "tenant": "acme",
        "device": "d1",
        "rule": "all",
        "metric": "temp",
        "op": ">",
        "threshold": 10.0,
        "value": 20,
        "state": "firing",
        "at": "2026-01-01T00:00:00.000+00:00",
    }
    assert engine.on_event(rules, event([25], device="d1")) == []  # already firing
    both = engine.on_event(rules, event([20], device="d2"))
    assert sorted(a["rule"] for a in both) == ["all", "d2"]
    assert [a["state"] for a in engine.on_event(rules, event([0], device="d1"))] == ["cleared"]
    # A restarted engine given the persisted state does not re-fire.
    again = AlertEngine(engine.firing)
    assert again.on_event(rules, event([30], device="d2")) == []
    # Non-numeric or absent metrics change nothing.
    assert (
        engine.on_event(rules, {**event([1]), "values": {"temp": True}, "min": {}, "max": {}}) == []
    )


class FakeCollection:
    def __init__(self, docs: list[dict]) -> None:
        self.docs, self.reads, self.fail = docs, 0, False

    def find(self, query: dict) -> list[dict]:
        self.reads += 1
        if self.fail:
            raise ConnectionError("database down")
        return [d for d in self.docs if all(d.get(k) == v for k, v in query.items())]


def test_rule_cache_rereads_after_its_ttl_and_serves_stale_rules_when_the_db_is_down() -> None:
    now = [0.0]
    doc = {
        "_id": "r",
        "tenant": "acme",
        "device": None,
        "metric": "temp",
        "op": ">",
        "threshold": 1,
        "hysteresis": 0,
        "enabled": True,
    }
    rules = FakeCollection([doc])
    cache = RuleCache({"rules": rules}, ttl_s=5, clock=lambda: now[0])  # type: ignore[arg-type]
    assert [r.id for r in cache.rules("acme")] == ["r"]
    assert cache.rules("globex") == []
    now[0] = 4.9
    cache.rules("acme")
    assert rules.reads == 1
    rules.docs.append({**doc, "_id": "r2"})
    now[0] = 5.0
    assert [r.id for r in cache.rules("acme")] == ["r", "r2"]
    rules.fail = True
    now[0] = 20.0
    assert [r.id for r in cache.rules("acme")] == ["r", "r2"]
    assert [r.id for r in cache.rules("acme")] == ["r", "r2"]
    assert rules.reads == 3  # a failed read also waits out the TTL: no hammering
