"""A report or export past its soft time limit fails with a message the user can act on,
wherever the limit's signal lands (in our code or inside pymongo's BSON decoder)."""

from __future__ import annotations

import pytest
from bson.errors import InvalidBSON
from celery.exceptions import SoftTimeLimitExceeded

from fairway.domain.job_params import JobFailed
from fairway.kernel.settings import Settings
from tasks.jobs import _explained_failures


def _settings() -> Settings:
    return Settings(report_soft_time_limit_s=1.5)


@pytest.mark.parametrize(
    "raised",
    [SoftTimeLimitExceeded(), InvalidBSON(str(SoftTimeLimitExceeded()))],
    ids=["in our code", "inside the BSON decoder"],
)
def test_the_soft_time_limit_becomes_a_job_failure(raised: Exception) -> None:
    expected = pytest.raises(JobFailed, match=r"past its time limit of 1\.5 s")
    with expected, _explained_failures("report", _settings()):
        raise raised


def test_a_real_bson_error_stays_what_it_is() -> None:
    with pytest.raises(InvalidBSON, match="bad eoo"), _explained_failures("report", _settings()):
        raise InvalidBSON("bad eoo")
