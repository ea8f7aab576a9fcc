"""Unit tests for ``fairway.kernel.settings``."""

from __future__ import annotations

import dataclasses

import pytest

from fairway.kernel.settings import ENV_PREFIX, Settings


def test_empty_env_gives_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_defaults() -> None:
    s = Settings()
    assert s.drr_quantum == 50
    assert s.max_message_bytes == 65_536
    assert s.max_clock_skew_s == 300.0
    assert s.max_reading_age_s == 604_800.0
    assert s.queue_type == "classic"
    assert s.metrics_port == 0


def test_values_are_parsed_with_the_field_type() -> None:
    s = Settings.from_env(
        {
            "FAIRWAY_DRR_QUANTUM": "7",
            "FAIRWAY_MAX_CLOCK_SKEW_S": "1.5",
            "FAIRWAY_DEVICE_RATE": "12",
            "FAIRWAY_QUEUE_TYPE": "quorum",
            "FAIRWAY_AMQP_URL": "amqp://u:p@h:5673/v",
            "FAIRWAY_METRICS_PORT": "9100",
        }
    )
    assert s.drr_quantum == 7 and type(s.drr_quantum) is int
    assert s.max_clock_skew_s == 1.5 and type(s.max_clock_skew_s) is float
    assert s.device_rate == 12.0 and type(s.device_rate) is float
    assert s.queue_type == "quorum"
    assert s.amqp_url == "amqp://u:p@h:5673/v"
    assert s.metrics_port == 9100
    # untouched fields keep their defaults
    assert s.batch_size == Settings().batch_size


def test_empty_and_unrelated_variables_are_ignored() -> None:
    s = Settings.from_env(
        {
            "FAIRWAY_BATCH_SIZE": "",
            "fairway_batch_size": "3",  # lower case is not ours
            "BATCH_SIZE": "4",
            "FAIRWAY_NOT_A_FIELD": "5",
        }
    )
    assert s == Settings()


def test_overrides_win_over_env() -> None:
    env = {"FAIRWAY_WRITERS": "4", "FAIRWAY_BATCH_SIZE": "10"}
    s = Settings.from_env(env, writers=8, log_level="DEBUG")
    assert s.writers == 8
    assert s.batch_size == 10
    assert s.log_level == "DEBUG"


def test_overrides_without_env() -> None:
    assert Settings.from_env({}, drr_quantum=3) == Settings(drr_quantum=3)


def test_unknown_override_raises() -> None:
    with pytest.raises(TypeError):
        Settings.from_env({}, no_such_setting=1)


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRWAY_TENANT_MAX_BACKLOG", "123")
    monkeypatch.delenv("FAIRWAY_WRITERS", raising=False)
    s = Settings.from_env()
    assert s.tenant_max_backlog == 123
    assert s.writers == Settings().writers


@pytest.mark.parametrize(
    ("var", "raw", "kind"),
    [
        ("FAIRWAY_WRITERS", "two", "int"),
        ("FAIRWAY_BATCH_SIZE", "1.5", "int"),
        ("FAIRWAY_MAX_CLOCK_SKEW_S", "5 minutes", "float"),
        ("FAIRWAY_METRICS_PORT", "0x10", "int"),
    ],
)
def test_invalid_value_names_the_variable(var: str, raw: str, kind: str) -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env({var: raw})
    assert str(info.value) == f"{var}={raw!r} is not a valid {kind}"


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.writers = 3  # type: ignore[misc]


def test_environ_lists_every_field() -> None:
    env = Settings().environ()
    names = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    assert set(env) == names
    assert all(isinstance(v, str) for v in env.values())
    assert env["FAIRWAY_DRR_QUANTUM"] == "50"
    assert env["FAIRWAY_MAX_CLOCK_SKEW_S"] == "300.0"
    assert env["FAIRWAY_QUEUE_TYPE"] == "classic"


def test_environ_round_trips_defaults() -> None:
    assert Settings.from_env(Settings().environ()) == Settings()


def test_environ_round_trips_custom_values() -> None:
    custom = Settings(
        amqp_url="amqp://a:b@broker:5672/%2Fvh",
        mongo_url="mongodb://db:27017/x?replicaSet=rs0",
        drr_quantum=9,
        max_clock_skew_s=0.125,
        device_rate=1e-3,
        queue_type="quorum",
        log_level="DEBUG",
        metrics_port=9464,
    )
    back = Settings.from_env(custom.environ())
    assert back == custom
    for f in dataclasses.fields(Settings):
        assert type(getattr(back, f.name)) is type(getattr(custom, f.name)), f.name
