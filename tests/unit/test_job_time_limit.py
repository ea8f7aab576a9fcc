"""A report or export past its soft time limit fails with a message the user can act on,
wherever the limit's signal lands (in our code or inside pymongo's BSON decoder)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import bson
import pytest
from bson.codec_options import CodecOptions
from bson.errors import InvalidBSON
from celery.exceptions import SoftTimeLimitExceeded

from fairway.domain.job_params import JobFailed
from fairway.kernel.settings import Settings
from tasks.jobs import _explained_failures


def _settings() -> Settings:
    return Settings(report_soft_time_limit_s=1.5)


class _LimitWhileConverting(dt.tzinfo):
    """The soft limit's signal landing while pymongo converts a stored datetime (as the
    database's tz-aware client does for every reading)."""

    def utcoffset(self, _when: dt.datetime | None) -> dt.timedelta:
        raise SoftTimeLimitExceeded()

    def dst(self, _when: dt.datetime | None) -> dt.timedelta:
        raise SoftTimeLimitExceeded()

    def fromutc(self, _when: dt.datetime) -> dt.datetime:
        raise SoftTimeLimitExceeded()


def _in_our_code() -> None:
    raise SoftTimeLimitExceeded()


def _in_the_decoder() -> None:
    stored = bson.encode({"ts": dt.datetime(2026, 12, 6, tzinfo=dt.UTC)})
    bson.decode(stored, CodecOptions(tz_aware=True, tzinfo=_LimitWhileConverting()))


def test_the_decoder_rewraps_the_limit_as_invalid_bson() -> None:
    """Why jobs.py looks inside InvalidBSON: pymongo drops the cause."""
    with pytest.raises(InvalidBSON, match="SoftTimeLimitExceeded"):
        _in_the_decoder()


@pytest.mark.parametrize(
    "where", [_in_our_code, _in_the_decoder], ids=["in our code", "inside the BSON decoder"]
)
def test_the_soft_time_limit_becomes_a_job_failure(where: Callable[[], None]) -> None:
    expected = pytest.raises(JobFailed, match=r"past its time limit of 1\.5 s")
    with expected, _explained_failures("report", _settings()):
        where()


def test_a_real_bson_error_stays_what_it_is() -> None:
    with pytest.raises(InvalidBSON, match="bad eoo"), _explained_failures("report", _settings()):
        raise InvalidBSON("bad eoo")


def test_the_failure_carries_its_reason() -> None:
    with pytest.raises(JobFailed) as failed, _explained_failures("report", _settings()):
        _in_our_code()
    assert failed.value.reason == "time_limit"
