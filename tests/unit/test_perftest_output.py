"""Reading RabbitMQ PerfTest's output (benchmarks/perftest.py), on a captured sample.

The sample is PerfTest 2.22.1's output of a 6 s run (one producer, one consumer,
persistent 150-byte messages, confirms) against the development broker.
"""

# The sample is kept verbatim, long lines and all.
# ruff: noqa: E501

from __future__ import annotations

import pytest

from benchmarks import perftest

SAMPLE = """\
id: test-194011-799, starting consumer #0
id: test-194011-799, starting consumer #0, channel #0
id: test-194011-799, starting producer #0
id: test-194011-799, starting producer #0, channel #0
id: test-194011-799, time 1.000 s, sent: 17193 msg/s, confirmed: 14600 msg/s, nacked: 0 msg/s, received: 16400 msg/s, min/median/75th/95th/99th consumer latency: 521/31006/52963/105161/119587 µs, confirm latency: 1065/22023/49040/104615/114143 µs
id: test-194011-799, time 2.002 s, sent: 19158 msg/s, confirmed: 20524 msg/s, nacked: 0 msg/s, received: 18783 msg/s, min/median/75th/95th/99th consumer latency: 391/91053/241005/306994/314785 µs, confirm latency: 626/108008/206340/270327/288430 µs
id: test-194011-799, time 3.000 s, sent: 17117 msg/s, confirmed: 16287 msg/s, nacked: 0 msg/s, received: 17456 msg/s, min/median/75th/95th/99th consumer latency: 162/44341/54617/105982/113430 µs, confirm latency: 396/89913/144618/238387/244779 µs
id: test-194011-799, time 4.005 s, sent: 22280 msg/s, confirmed: 23968 msg/s, nacked: 0 msg/s, received: 23015 msg/s, min/median/75th/95th/99th consumer latency: 1966/37704/54009/97911/103645 µs, confirm latency: 7068/123800/195880/242373/247181 µs
id: test-194011-799, time 5.001 s, sent: 25618 msg/s, confirmed: 23074 msg/s, nacked: 0 msg/s, received: 24729 msg/s, min/median/75th/95th/99th consumer latency: 4537/39459/53047/71290/83529 µs, confirm latency: 6989/111710/193365/235120/261593 µs
id: test-194011-799, time 6.000 s, sent: 29436 msg/s, confirmed: 29148 msg/s, nacked: 0 msg/s, received: 29669 msg/s, min/median/75th/95th/99th consumer latency: 1985/29354/39030/56481/65798 µs, confirm latency: 17165/103702/146572/185781/223728 µs
test stopped (Reached time limit)
id: test-194011-799, sending rate avg: 21603 msg/s
id: test-194011-799, receiving rate avg: 21474 msg/s
id: test-194011-799, consumer latency min/median/75th/95th/99th 936/39255/57452/144009/306643 µs
id: test-194011-799, confirm latency min/median/75th/95th/99th 544/103564/166387/237883/269215 µs
"""


def intervals() -> list[perftest.Interval]:
    found = [perftest.parse_interval(line) for line in SAMPLE.splitlines()]
    return [i for i in found if i is not None]


def test_every_per_second_line_and_nothing_else_is_an_interval() -> None:
    got = intervals()
    assert [i.t for i in got] == [1.0, 2.002, 3.0, 4.005, 5.001, 6.0]
    assert got[1] == perftest.Interval(2.002, 19158, 20524, 0, 18783)
    assert perftest.parse_interval("test stopped (Reached time limit)") is None
    assert perftest.parse_interval("id: x, receiving rate avg: 21474 msg/s") is None


def test_closing_averages() -> None:
    assert perftest.parse_averages(SAMPLE) == {"sending": 21603, "receiving": 21474}


def test_window_counts_from_the_first_line_to_the_last() -> None:
    got = perftest.window(intervals())
    # The first line only opens the window: its second (JVM warm-up) is not counted.
    assert got["seconds"] == pytest.approx(5.0)
    expected = 18783 * 1.002 + 17456 * 0.998 + 23015 * 1.005 + 24729 * 0.996 + 29669 * 0.999
    assert got["received"] == pytest.approx(expected)
    assert got["nacked"] == 0
    assert got["confirmed"] == pytest.approx(
        20524 * 1.002 + 16287 * 0.998 + 23968 * 1.005 + 23074 * 0.996 + 29148 * 0.999
    )


def test_one_line_is_no_window() -> None:
    assert perftest.window(intervals()[:1])["seconds"] == 0


def test_arguments_pin_the_measured_setup() -> None:
    args = perftest.arguments("amqp://u:p@h/v", "q", 150, 15, 5000, 1000, 200)
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["--size"] == "150"
    assert pairs["--flag"] == "persistent"
    assert pairs["--confirm"] == "5000"
    assert pairs["--qos"] == "1000"
    assert pairs["--multi-ack-every"] == "200"
    assert pairs["--time"] == "16"  # one second more: the first line opens the window
    assert pairs["--producers"] == pairs["--consumers"] == "1"
