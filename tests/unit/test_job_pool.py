"""The ``cpu`` process rule of fair dispatch (``fairway.storage.job_pool``) and its
settings: a tenant already running a job never takes the reserved processes, and a
freed process goes to the tenant whose turn it is, not to the one with the oldest job."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.errors import PyMongoError

from fairway.kernel.settings import Settings, SettingsError
from fairway.storage import job_records
from fairway.storage.job_pool import (
    POOL_FULL,
    POOL_RESERVED,
    TURNS,
    Pool,
    refusal,
    turn_order,
)
from tasks import dispatch

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_a_tenant_with_nothing_released_takes_any_free_process() -> None:
    pool = Pool(processes=2, reserved=1)
    assert refusal(held=0, tenant_released=0, pool=pool) is None
    assert refusal(held=1, tenant_released=0, pool=pool) is None  # the reserved one


def test_a_tenant_running_a_job_leaves_the_reserved_processes_free() -> None:
    pool = Pool(processes=4, reserved=1)
    assert refusal(held=2, tenant_released=1, pool=pool) is None
    assert refusal(held=3, tenant_released=1, pool=pool) == POOL_RESERVED
    assert refusal(held=3, tenant_released=0, pool=pool) is None  # a newcomer takes it


def test_no_process_is_taken_beyond_the_pool() -> None:
    pool = Pool(processes=2, reserved=1)
    assert refusal(held=2, tenant_released=0, pool=pool) == POOL_FULL
    assert refusal(held=2, tenant_released=3, pool=pool) == POOL_FULL


def test_without_a_reserve_one_tenant_may_take_every_process() -> None:
    pool = Pool(processes=2, reserved=0)
    assert refusal(held=1, tenant_released=1, pool=pool) is None
    assert refusal(held=2, tenant_released=1, pool=pool) == POOL_FULL


def test_no_pool_bound_refuses_nothing() -> None:
    assert refusal(held=100, tenant_released=100, pool=Pool()) is None


def test_a_freed_process_goes_to_the_tenant_with_fewest_released_not_the_oldest_job() -> None:
    # The flooder's waiting jobs are older than the newcomer's: oldest-first would give it
    # every freed process.
    waiting = {"hostile": (4, T0), "quiet": (1, T0 + timedelta(minutes=5))}
    assert turn_order(waiting, {"hostile": 1}, {"hostile": T0}) == ["quiet", "hostile"]


def test_between_equals_the_longest_since_its_last_release_goes_first() -> None:
    waiting = {"a": (2, T0), "b": (2, T0 + timedelta(seconds=1)), "c": (1, T0)}
    last = {"a": T0 + timedelta(seconds=30), "b": T0 + timedelta(seconds=10)}
    # c was never released; then b (released longer ago); a last, its job oldest or not.
    assert turn_order(waiting, {}, last) == ["c", "b", "a"]


def test_the_job_pool_defaults_keep_one_process_for_other_tenants() -> None:
    s = Settings()
    assert (s.jobs_cpu_processes, s.jobs_reserved_processes, s.reserved_processes) == (2, None, 1)
    assert Pool(2, s.reserved_processes) == dispatch.pool(s)


def test_a_reserve_of_every_process_is_refused_at_start() -> None:
    env = {"FAIRWAY_JOBS_CPU_PROCESSES": "2", "FAIRWAY_JOBS_RESERVED_PROCESSES": "2"}
    with pytest.raises(SettingsError, match="FAIRWAY_JOBS_RESERVED_PROCESSES=2 must be below"):
        Settings.from_env(env)


def test_a_reserve_set_into_a_tenants_share_is_refused_at_start() -> None:
    env = {
        "FAIRWAY_JOBS_CPU_PROCESSES": "2",
        "FAIRWAY_JOBS_DISPATCH_PER_TENANT": "2",
        "FAIRWAY_JOBS_RESERVED_PROCESSES": "1",
    }
    with pytest.raises(SettingsError, match="FAIRWAY_JOBS_RESERVED_PROCESSES=1 leaves 1 of"):
        Settings.from_env(env)
    # Without a reserve the share may be the whole pool (the operator's choice).
    assert (
        Settings.from_env({**env, "FAIRWAY_JOBS_RESERVED_PROCESSES": "0"}).reserved_processes == 0
    )


@pytest.mark.parametrize("share", [2, 3])
def test_a_larger_share_with_the_reserve_unset_starts_without_one(share: int) -> None:
    # As before the reserve existed: every process (relay, gateway, ...) builds Settings.
    s = Settings.from_env({"FAIRWAY_JOBS_DISPATCH_PER_TENANT": str(share)})
    assert (s.jobs_cpu_processes, s.reserved_processes) == (2, 0)


def test_one_process_starts_without_a_reserve_unless_one_is_set() -> None:
    # Compose with FAIRWAY_CPU_WORKERS=1: one process, the reserve unset (passed empty).
    env = {"FAIRWAY_JOBS_CPU_PROCESSES": "1", "FAIRWAY_JOBS_RESERVED_PROCESSES": ""}
    assert Settings.from_env(env).reserved_processes == 0
    assert Settings(jobs_cpu_processes=1).reserved_processes == 0
    with pytest.raises(SettingsError, match="FAIRWAY_JOBS_RESERVED_PROCESSES=1 must be below"):
        Settings(jobs_cpu_processes=1, jobs_reserved_processes=1)


def test_an_unset_reserve_reaches_child_processes_unset() -> None:
    # environ() hands settings to the processes a parent starts: the reserve stays derived,
    # so a child given other processes derives its own.
    parent = Settings()
    assert parent.environ()["FAIRWAY_JOBS_RESERVED_PROCESSES"] == ""
    child = Settings.from_env(parent.environ(), jobs_cpu_processes=1)
    assert (child.jobs_reserved_processes, child.reserved_processes) == (None, 0)
    assert Settings.from_env(Settings(jobs_reserved_processes=0).environ()).reserved_processes == 0


class _Collection:
    def __init__(self, name: str) -> None:
        self.name = name

    def update_one(self, *_: Any, **__: Any) -> None:
        if self.name == TURNS:
            raise PyMongoError("the database went away")


class _Database:
    def __getitem__(self, name: str) -> _Collection:
        return _Collection(name)


class _Broker:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_task(self, _name: str, kwargs: dict[str, Any], task_id: str) -> None:
        self.sent.append(task_id)


def test_a_released_job_whose_turn_is_not_noted_stays_released(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The job is published and marked: the web app must not answer 500 for it.
    job = {"_id": "job-1", "tenant": "acme", "user": "alice", "params": {}, "release": 1,
           "kind": job_records.REPORT, "slot": "dispatch/acme/0", "created": T0}  # fmt: skip
    broker = _Broker()
    with caplog.at_level(logging.WARNING, logger="fairway.jobs.dispatch"):
        dispatch.release(broker, _Database(), job)  # type: ignore[arg-type]
    assert broker.sent == ["job-1"]
    [record] = [r for r in caplog.records if r.getMessage() == "job turn not noted"]
    assert (record.job, record.tenant) == ("job-1", "acme")  # type: ignore[attr-defined]
    assert "went away" in record.error  # type: ignore[attr-defined]
