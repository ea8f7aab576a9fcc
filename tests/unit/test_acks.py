"""Unit tests for ``fairway.kernel.acks.AckWatermark``."""

from __future__ import annotations

import random

import pytest

from fairway.kernel.acks import AckWatermark


def tracked(*tags: int) -> AckWatermark:
    acks = AckWatermark()
    for tag in tags:
        acks.track(tag)
    return acks


def test_in_order_settle_returns_each_tag() -> None:
    acks = tracked(1, 2, 3)
    assert acks.settle([1]) == 1
    assert acks.settle([2]) == 2
    assert acks.settle([3]) == 3
    assert acks.outstanding == 0


def test_settling_a_batch_returns_the_last_tag() -> None:
    acks = tracked(1, 2, 3, 4, 5)
    assert acks.settle([1, 2, 3]) == 3
    assert acks.outstanding == 2
    assert acks.settle([5, 4]) == 5
    assert acks.outstanding == 0


def test_out_of_order_waits_for_the_gap() -> None:
    acks = tracked(1, 2, 3, 4)
    assert acks.settle([2]) is None
    assert acks.settle([4]) is None
    assert acks.outstanding == 4
    assert acks.settle([1]) == 2  # 1, 2 settled; 3 is not
    assert acks.outstanding == 2
    assert acks.settle([3]) == 4
    assert acks.outstanding == 0


def test_gaps_in_tag_numbers_are_fine() -> None:
    # tags need only increase; the watermark walks the tracked tags, not integers
    acks = tracked(3, 7, 20)
    assert acks.settle([7]) is None
    assert acks.settle([3]) == 7
    assert acks.settle([20]) == 20


def test_empty_settle_returns_none() -> None:
    acks = tracked(1)
    assert acks.settle([]) is None
    assert AckWatermark().settle([]) is None
    assert acks.outstanding == 1


def test_settle_accepts_any_iterable() -> None:
    acks = tracked(1, 2, 3)
    assert acks.settle(t for t in (2, 1)) == 2
    assert acks.settle({3}) == 3


@pytest.mark.parametrize("bad", [5, 4, 1])
def test_track_non_increasing_raises(bad: int) -> None:
    acks = tracked(1, 2, 5)
    with pytest.raises(ValueError, match=f"delivery tag {bad} arrived after 5"):
        acks.track(bad)
    assert acks.outstanding == 3
    acks.track(6)
    assert acks.outstanding == 4


def test_track_non_increasing_raises_after_everything_was_acked() -> None:
    # the docstring requires increasing tags; a repeated tag is a bug whether or not
    # the earlier ones are still outstanding
    acks = tracked(1, 2)
    assert acks.settle([1, 2]) == 2
    with pytest.raises(ValueError):
        acks.track(2)


def test_reset_forgets_tags_and_settlements() -> None:
    acks = tracked(1, 2, 3)
    assert acks.settle([2, 3]) is None
    acks.reset()
    assert acks.outstanding == 0
    assert acks.settle([1]) is None
    # a new channel numbers from 1 again; old settlements must not leak into it
    acks.track(1)
    acks.track(2)
    acks.track(3)
    assert acks.settle([1]) == 1
    assert acks.outstanding == 2
    assert acks.settle([3]) is None


def test_outstanding_counts_uncovered_deliveries() -> None:
    acks = AckWatermark()
    assert acks.outstanding == 0
    for tag in range(1, 11):
        acks.track(tag)
    assert acks.outstanding == 10
    acks.settle([1, 2, 5])
    assert acks.outstanding == 8  # 5 is settled but not covered
    acks.settle([3, 4])
    assert acks.outstanding == 5


@pytest.mark.parametrize("seed", range(30))
def test_random_against_brute_force_model(seed: int) -> None:
    rng = random.Random(seed)
    acks = AckWatermark()
    tracked_tags: list[int] = []
    settled: set[int] = set()
    acked_upto = 0  # every tracked tag <= this has been covered by a returned ack
    next_tag = 1
    for _ in range(300):
        if rng.random() < 0.5:
            for _ in range(rng.randint(1, 5)):
                next_tag += rng.choice((1, 1, 1, 2, 5))
                acks.track(next_tag)
                tracked_tags.append(next_tag)
        else:
            open_tags = [t for t in tracked_tags if t > acked_upto and t not in settled]
            if not open_tags:
                continue
            chosen = rng.sample(open_tags, rng.randint(1, min(4, len(open_tags))))
            settled.update(chosen)
            got = acks.settle(chosen)
            # brute force: the longest prefix of uncovered tags that are all settled
            uncovered = [t for t in tracked_tags if t > acked_upto]
            expected = None
            for t in uncovered:
                if t not in settled:
                    break
                expected = t
            assert got == expected
            if got is not None:
                # never covers an unsettled tag
                assert all(t in settled for t in tracked_tags if t <= got)
                acked_upto = got
        assert acks.outstanding == sum(1 for t in tracked_tags if t > acked_upto)
    # settle everything left: one ack covers all
    rest = [t for t in tracked_tags if t > acked_upto and t not in settled]
    if any(t > acked_upto for t in tracked_tags):
        assert acks.settle(rest) == tracked_tags[-1]
    assert acks.outstanding == 0


def test_settled_tags_behind_a_held_one_are_taken_to_be_acked_one_by_one() -> None:
    acks = AckWatermark()
    for tag in range(1, 7):
        acks.track(tag)
    assert acks.settle([1, 3, 4]) == 1
    assert acks.head == 2
    assert acks.take_settled() == [3, 4]  # acked one by one behind the unsettled 2
    assert acks.outstanding == 3  # 2, 5, 6
    assert acks.settle([6]) is None
    # 2 settles: the prefix runs past 3 and 4 (acked already) to 2 itself, never naming them.
    assert acks.settle([2]) == 2
    assert acks.head == 5 and acks.outstanding == 2
    assert acks.settle([5]) == 6
    assert acks.outstanding == 0 and acks.head is None


def test_a_multiple_ack_never_names_a_tag_acked_one_by_one() -> None:
    acks = AckWatermark()
    for tag in range(1, 4):
        acks.track(tag)
    acks.settle([2, 3])
    assert acks.take_settled() == [2, 3]
    assert acks.settle([1]) == 1  # covers 1 only; 2 and 3 were acked on their own
    assert acks.outstanding == 0
