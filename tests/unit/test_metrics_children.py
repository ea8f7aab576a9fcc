"""The cache of a labelled metric's children."""

from prometheus_client import CollectorRegistry, Counter

from fairway.kernel.metrics import ChildCache


def test_one_child_per_label_tuple_and_counts_reach_the_metric() -> None:
    registry = CollectorRegistry()
    counter = Counter("fairway_test_things", "things", ["tenant", "reason"], registry=registry)
    children = ChildCache(counter)
    children("acme", "invalid").inc()
    children("acme", "invalid").inc(2)
    children("globex", "invalid").inc()
    assert children("acme", "invalid") is children("acme", "invalid")
    assert children("acme", "invalid") is not children("globex", "invalid")
    assert (
        registry.get_sample_value(
            "fairway_test_things_total", {"tenant": "acme", "reason": "invalid"}
        )
        == 3
    )
    assert (
        registry.get_sample_value(
            "fairway_test_things_total", {"tenant": "globex", "reason": "invalid"}
        )
        == 1
    )
