"""Unit tests for ``fairway.kernel.settings``."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from fairway.cli import main
from fairway.kernel.settings import (
    ENV_PREFIX,
    SECTIONS,
    Settings,
    SettingsError,
    table,
    variables,
)


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


# -- validation --------------------------------------------------------------------


def test_every_default_is_valid() -> None:
    s = Settings()  # validates in __post_init__
    assert Settings.from_env({}) == s
    for v in variables():
        assert v.rule, v.name


def test_every_setting_has_a_known_section() -> None:
    assert {v.section for v in variables()} == set(SECTIONS)


@pytest.mark.parametrize(
    ("var", "raw", "message"),
    [
        # not a number
        ("FAIRWAY_BATCH_SIZE", "abc", "FAIRWAY_BATCH_SIZE='abc' is not a valid int"),
        ("FAIRWAY_DEVICE_RATE", "fast", "FAIRWAY_DEVICE_RATE='fast' is not a valid float"),
        (
            "FAIRWAY_COOKIE_SECURE",
            "maybe",
            "FAIRWAY_COOKIE_SECURE='maybe' is not a valid bool (true/false, yes/no, on/off, 1/0)",
        ),
        # below the bound
        ("FAIRWAY_BATCH_SIZE", "0", "FAIRWAY_BATCH_SIZE='0' must be >= 1"),
        ("FAIRWAY_RELAY_PREFETCH", "-5", "FAIRWAY_RELAY_PREFETCH='-5' must be >= 1"),
        ("FAIRWAY_TENANT_REFRESH_S", "0", "FAIRWAY_TENANT_REFRESH_S='0' must be > 0"),
        ("FAIRWAY_PROXY_HOPS", "-1", "FAIRWAY_PROXY_HOPS='-1' must be >= 0"),
        ("FAIRWAY_BATCH_LINGER_MS", "nan", "FAIRWAY_BATCH_LINGER_MS='nan' must be a finite number"),
        # above the bound
        ("FAIRWAY_WEB_PORT", "65536", "FAIRWAY_WEB_PORT='65536' must be between 0 and 65535"),
        ("FAIRWAY_REPORT_DB_SHARE", "1.5", "FAIRWAY_REPORT_DB_SHARE='1.5' must be > 0 and <= 1"),
        ("FAIRWAY_REPORT_DB_SHARE", "0", "FAIRWAY_REPORT_DB_SHARE='0' must be > 0 and <= 1"),
        # a bad choice
        (
            "FAIRWAY_QUEUE_TYPE",
            "quorom",
            "FAIRWAY_QUEUE_TYPE='quorom' must be one of classic, quorum",
        ),
        (
            "FAIRWAY_LOG_LEVEL",
            "LOUD",
            "FAIRWAY_LOG_LEVEL='LOUD' must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
        ),
        # a URL that does not parse or has the wrong scheme (the password is not echoed)
        (
            "FAIRWAY_AMQP_URL",
            "http://u:secret@broker/",
            "FAIRWAY_AMQP_URL='http://u:***@broker/' must be a URL starting amqp:// or amqps://",
        ),
        (
            "FAIRWAY_RABBITMQ_MGMT_URL",
            "http://h:99999",
            "FAIRWAY_RABBITMQ_MGMT_URL='http://h:99999' is not a valid URL "
            "(Port out of range 0-65535)",
        ),
        (
            "FAIRWAY_MONGO_URL",
            "127.0.0.1:27017",
            "FAIRWAY_MONGO_URL='127.0.0.1:27017' must be a URL starting mongodb:// "
            "or mongodb+srv://",
        ),
        (
            "FAIRWAY_GATEWAY_PUBLIC_URL",
            "gateway.example",
            "FAIRWAY_GATEWAY_PUBLIC_URL='gateway.example' must be a URL starting http:// "
            "or https:// (or empty)",
        ),
        (
            "FAIRWAY_GATEWAY_ALLOWED_ORIGINS",
            "https://a.example,b.example",
            "FAIRWAY_GATEWAY_ALLOWED_ORIGINS='https://a.example,b.example' must be "
            "comma-separated origins like https://host:port, or * ('b.example' is not an origin)",
        ),
    ],
)
def test_bad_value_names_the_variable(var: str, raw: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({var: raw})
    assert str(info.value) == message
    assert info.value.problems == {var: message}


def test_bad_networks_are_refused() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"FAIRWAY_BROKER_AUTH_NETWORKS": "10.0.0.0/8,not-a-net"})
    assert str(info.value).startswith(
        "FAIRWAY_BROKER_AUTH_NETWORKS='10.0.0.0/8,not-a-net' must be comma-separated IP networks"
    )


def test_several_bad_values_are_named_together() -> None:
    env = {
        "FAIRWAY_WRITERS": "0",
        "FAIRWAY_BATCH_SIZE": "abc",
        "FAIRWAY_QUEUE_TYPE": "mirrored",
        "FAIRWAY_DRR_QUANTUM": "7",  # fine
    }
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    # in declaration order, whether they failed to parse or broke a rule
    assert list(info.value.problems) == [
        "FAIRWAY_QUEUE_TYPE",
        "FAIRWAY_BATCH_SIZE",
        "FAIRWAY_WRITERS",
    ]
    assert str(info.value) == (
        "3 settings are invalid:\n"
        "  FAIRWAY_QUEUE_TYPE='mirrored' must be one of classic, quorum\n"
        "  FAIRWAY_BATCH_SIZE='abc' is not a valid int\n"
        "  FAIRWAY_WRITERS='0' must be >= 1"
    )


def test_limits_that_mean_none_accept_zero() -> None:
    s = Settings.from_env(
        {
            "FAIRWAY_REPORT_SOFT_TIME_LIMIT_S": "0",
            "FAIRWAY_REPORT_TIME_LIMIT_S": "0",
            "FAIRWAY_METRICS_PORT": "0",
            "FAIRWAY_PROXY_HOPS": "0",
            "FAIRWAY_BATCH_LINGER_MS": "0",
            "FAIRWAY_RULES_CACHE_TTL_S": "0",
            "FAIRWAY_REJECTED_BODY_BYTES": "0",
        }
    )
    assert s.report_soft_time_limit_s == 0.0 and s.report_time_limit_s == 0.0


def test_accepted_spellings() -> None:
    s = Settings.from_env(
        {
            "FAIRWAY_LOG_LEVEL": "debug",  # log.setup upper-cases it
            "FAIRWAY_REPORT_DB_SHARE": "1",
            "FAIRWAY_GATEWAY_ALLOWED_ORIGINS": "https://a.example/, http://b.example:8080",
            "FAIRWAY_CELERY_BROKER_URL": "pyamqp://u:p@broker:5672/jobs",
            "FAIRWAY_MONGO_URL": "mongodb://a:1,b:2/x?replicaSet=rs0",
            "FAIRWAY_AMQP_URL": "amqps://u:p@[::1]:5671/%2F",
        }
    )
    assert s.log_level == "debug"
    assert Settings(gateway_allowed_origins="*").gateway_allowed_origins == "*"


def test_overrides_are_validated() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({}, batch_size=0)
    assert str(info.value) == "FAIRWAY_BATCH_SIZE=0 must be >= 1"


def test_an_override_replaces_a_bad_variable() -> None:
    assert Settings.from_env({"FAIRWAY_WRITERS": "two"}, writers=3).writers == 3


def test_construction_validates_value_and_type() -> None:
    with pytest.raises(SettingsError, match=r"^FAIRWAY_QUEUE_TYPE='lazy' must be one of"):
        Settings(queue_type="lazy")  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match=r"^FAIRWAY_WRITERS='2' is not a valid int$"):
        Settings(writers="2")  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match=r"^FAIRWAY_BATCH_SIZE=True is not a valid int$"):
        Settings(batch_size=True)
    assert Settings(device_rate=5).device_rate == 5  # an int is a fine float


def test_settings_error_is_a_value_error() -> None:
    # callers that caught the old ValueError keep working
    assert issubclass(SettingsError, ValueError)


def test_relay_confirm_window_is_gone() -> None:
    assert "relay_confirm_window" not in {f.name for f in dataclasses.fields(Settings)}


def test_table_lists_every_variable_by_section() -> None:
    text = table()
    for v in variables():
        assert f"| `{v.name}` |" in text
    assert text.index("**broker and queues**") < text.index("`FAIRWAY_AMQP_URL`")


def test_cli_refuses_bad_settings_with_exit_code_2() -> None:
    env = {"FAIRWAY_BATCH_SIZE": "abc", "FAIRWAY_WRITERS": "0"}
    result = CliRunner().invoke(main, ["tenant", "list"], env=env)
    assert result.exit_code == 2
    assert result.output == (
        "error: 2 settings are invalid:\n"
        "  FAIRWAY_BATCH_SIZE='abc' is not a valid int\n"
        "  FAIRWAY_WRITERS='0' must be >= 1\n"
    )


def test_a_broker_message_limit_below_the_bundles_is_refused() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"FAIRWAY_BROKER_MAX_MESSAGE_BYTES": "32768"})
    assert str(info.value).startswith(
        "FAIRWAY_BROKER_MAX_MESSAGE_BYTES=32768 is below FAIRWAY_BUNDLE_MAX_BYTES (65536)"
    )
    # The largest single reading's bundle: 65,536 + 14 x 64 + 2 x 128 + 512 = 67,200 bytes.
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"FAIRWAY_BROKER_MAX_MESSAGE_BYTES": "67199"})
    assert "below the largest bundle of one reading (67200 bytes" in str(info.value)
    assert Settings.from_env({"FAIRWAY_BROKER_MAX_MESSAGE_BYTES": "67200"})
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"FAIRWAY_MAX_MESSAGE_BYTES": "131072"})  # the broker's, default
    assert list(info.value.problems) == ["FAIRWAY_BROKER_MAX_MESSAGE_BYTES"]
