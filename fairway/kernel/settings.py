"""Settings read from environment variables, each with a sane default.

Every limit the pipeline enforces is one variable here, so an operator can see
and change all of them in one place. Each setting is declared once, in the section
of its concern, with its type, its default and the rule its value must follow
(bounds, choices, URL schemes): validation at start, the error messages, the
README's configuration table (checked against this file by
``tests/unit/test_readme_settings.py``) and ``python -m fairway.kernel.settings``
all read that declaration.

A bad value is a :class:`SettingsError` naming every bad variable at once; the
CLI and ``celery -A tasks`` turn it into a usage error (exit code 2).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, TypeVar, get_args

ENV_PREFIX = "FAIRWAY_"

QueueType = Literal["classic", "quorum"]

T = TypeVar("T")


class SettingsError(ValueError):
    """One or more settings are invalid; ``problems`` maps each variable to its sentence."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        lines = list(self.problems.values())
        if len(lines) == 1:
            message = lines[0]
        else:
            message = f"{len(lines)} settings are invalid:\n" + "\n".join(f"  {s}" for s in lines)
        super().__init__(message)


# -- rules: what a value must be ------------------------------------------------------
class Rule(Protocol):
    """A constraint on one setting's (already typed) value."""

    def problem(self, value: Any) -> str | None:
        """Why ``value`` breaks the rule (``"must be >= 1"``), or None if it is fine."""

    def describe(self) -> str:
        """The rule in a few words, for tables and docs."""


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Bound:
    """A number within ``[low, high]``; ``low_open`` excludes ``low`` itself."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def problem(self, value: Any) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {self.describe()}"
        if self.high is not None and value > self.high:
            return f"must be {self.describe()}"
        return None

    def describe(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is None:
            return low
        high = f"<= {_number(self.high)}"
        if not self.low_open and self.low is not None:
            return f"between {_number(self.low)} and {_number(self.high)}"
        return f"{low} and {high}" if low else high


@dataclass(frozen=True)
class OneOf:
    """One of ``choices`` (compared without case when ``ignore_case``)."""

    choices: tuple[str, ...]
    ignore_case: bool = False

    def problem(self, value: Any) -> str | None:
        allowed = {c.upper() for c in self.choices} if self.ignore_case else set(self.choices)
        if (value.upper() if self.ignore_case else value) in allowed:
            return None
        return f"must be {self.describe()}"

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)


@dataclass(frozen=True)
class Url:
    """A URL with one of ``schemes`` and a host; ``optional`` allows the empty string."""

    schemes: tuple[str, ...]
    optional: bool = False
    check_port: bool = True  # off for MongoDB, whose URLs may list several hosts

    def problem(self, value: Any) -> str | None:
        if value == "" and self.optional:
            return None
        try:
            parts = urllib.parse.urlsplit(value)
            if self.check_port:
                _ = parts.port  # raises on a port that is not a number in range
        except ValueError as exc:
            return f"is not a valid URL ({exc})"
        if parts.scheme not in self.schemes or not parts.netloc:
            return f"must be {self.describe()}"
        return None

    def describe(self) -> str:
        schemes = " or ".join(f"{s}://" for s in self.schemes)
        return f"a URL starting {schemes}" + (" (or empty)" if self.optional else "")


def split_urls(value: str) -> list[str]:
    """The URLs of a comma-separated list (one URL is a list of one), blanks trimmed."""
    return [part.strip() for part in value.split(",")]


@dataclass(frozen=True)
class UrlList:
    """One URL or several, comma-separated: the nodes of one RabbitMQ cluster.

    Each is a :class:`Url` of ``schemes``. Several must agree on the scheme and, with
    ``same_path``, on the path (the vhost): they are addresses of the same broker, tried
    in order on connection loss. No address may appear twice.
    """

    schemes: tuple[str, ...]
    optional: bool = False
    same_path: bool = True

    def problem(self, value: Any) -> str | None:
        if value == "" and self.optional:
            return None
        urls = split_urls(value)
        one = Url(self.schemes)
        for url in urls:
            why = one.problem(url)
            if why is not None:
                return why if len(urls) == 1 else f"has an entry {_shown(url)} that {why}"
        parts = [urllib.parse.urlsplit(url) for url in urls]
        if len({p.scheme for p in parts}) > 1:
            return "mixes URL schemes: every broker address must use the same one"
        vhosts = {urllib.parse.unquote(p.path.lstrip("/")) or "/" for p in parts}
        if self.same_path and len(vhosts) > 1:
            return "names different vhosts: every broker address must name the same one"
        addresses = [(p.hostname, p.port) for p in parts]
        if len(set(addresses)) < len(addresses):
            return "lists a broker address twice"
        return None

    def describe(self) -> str:
        schemes = " or ".join(f"{s}://" for s in self.schemes)
        return f"one or more comma-separated URLs starting {schemes}" + (
            " (or empty)" if self.optional else ""
        )


@dataclass(frozen=True)
class Networks:
    """Comma-separated IP networks (``127.0.0.1/32,::1/128``), at least one."""

    def problem(self, value: Any) -> str | None:
        entries = [n.strip() for n in value.split(",")]
        try:
            for entry in entries:
                ipaddress.ip_network(entry)  # as web/broker_auth.py parses them
        except ValueError as exc:
            return f"must be {self.describe()} ({exc})"
        return None

    def describe(self) -> str:
        return "comma-separated IP networks"


@dataclass(frozen=True)
class Origins:
    """Comma-separated web origins (``https://host[:port]``) or ``*``; empty means default."""

    def problem(self, value: Any) -> str | None:
        for entry in (o.strip().rstrip("/") for o in value.split(",")):
            if not entry or entry == "*":
                continue
            parts = urllib.parse.urlsplit(entry)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                return f"must be {self.describe()} ({entry!r} is not an origin)"
        return None

    def describe(self) -> str:
        return "comma-separated origins like https://host:port, or *"


@dataclass(frozen=True)
class ReadableFile:
    """The path of a file this process can read; ``optional`` allows the empty string."""

    optional: bool = False

    def problem(self, value: Any) -> str | None:
        if value == "" and self.optional:
            return None
        if not os.path.isfile(value):
            return "must be an existing file"
        if not os.access(value, os.R_OK):
            return "must be a file this process can read"
        return None

    def describe(self) -> str:
        return "the path of a readable file" + (" (or empty)" if self.optional else "")


@dataclass(frozen=True)
class NonEmpty:
    """Any string but the empty one."""

    def problem(self, value: Any) -> str | None:
        return "must not be empty" if not value.strip() else None

    def describe(self) -> str:
        return "not empty"


AT_LEAST_1 = Bound(low=1)
AT_LEAST_0 = Bound(low=0)
POSITIVE = Bound(low=0, low_open=True)  # durations and rates where 0 would spin or stall
PORT = Bound(low=0, high=65535)
SHARE = Bound(low=0, high=1, low_open=True)
LOG_LEVELS = OneOf(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), ignore_case=True)

# -- sections -------------------------------------------------------------------------
BROKER = "broker and queues"
CONTRACT = "message contract"
RELAY = "relay"
SCHEDULER = "scheduler"
WEB = "web"
GATEWAY = "gateway"
MONITOR = "monitor"
ARCHIVER = "archiver"
JOBS = "jobs"
OBSERVABILITY = "logging and metrics"
SECTIONS = (
    BROKER,
    CONTRACT,
    RELAY,
    SCHEDULER,
    WEB,
    GATEWAY,
    MONITOR,
    ARCHIVER,
    JOBS,
    OBSERVABILITY,
)


def setting(default: T, section: str, rule: Rule | None = None, kind: type | None = None) -> T:
    """Declare a setting: its default, its section and the rule its value must follow.

    A default of None means "unset, derived from other settings" and needs its ``kind``.
    """
    meta = {"section": section, "rule": rule, "kind": kind or type(default)}
    found: T = field(default=default, metadata=meta)
    return found


@dataclass(frozen=True)
class Settings:
    """Process-wide configuration; build it with :meth:`from_env` (it validates itself)."""

    # -- broker and queues (bounds in messages; overflow refused at publish and counted)
    # One broker, or the nodes of a cluster comma-separated (same scheme and vhost): every
    # connection fails over to the next address when it is lost (fairway/amqp/connection.py).
    amqp_url: str = setting(
        "amqp://guest:guest@127.0.0.1:5672/%2F", BROKER, UrlList(("amqp", "amqps"))
    )
    # CA certificates (PEM) that an amqps:// broker's certificate must chain to; empty:
    # the system's. With amqps the chain and the host name are always verified.
    amqp_ca_file: str = setting("", BROKER, ReadableFile(optional=True))
    # Used to close a disabled device's open connections at once, and by the monitor. On a
    # cluster, several nodes' comma-separated: a call goes to the next when one is down.
    rabbitmq_mgmt_url: str = setting(
        "http://guest:guest@127.0.0.1:15672", BROKER, UrlList(("http", "https"), same_path=False)
    )
    ingest_max_length: int = setting(1_000_000, BROKER, AT_LEAST_1)
    tenant_max_backlog: int = setting(1_000_000, BROKER, AT_LEAST_1)
    rejected_max_length: int = setting(100_000, BROKER, AT_LEAST_1)
    # Byte bounds too, so that maximum-size messages cannot fill the broker's memory or
    # disk (whose alarms would block every publisher of every tenant) within the counts.
    ingest_max_bytes: int = setting(1 << 30, BROKER, AT_LEAST_1)
    tenant_max_backlog_bytes: int = setting(256 << 20, BROKER, AT_LEAST_1)
    # A tenant queue holds bundles of readings, so its cap in readings (the tenant's
    # max_backlog) is turned into bytes: x-max-length-bytes = min(the byte bound above,
    # max_backlog x this allowance per reading); x-max-length stays max_backlog messages.
    tenant_backlog_reading_bytes: int = setting(256, BROKER, Bound(low=16, high=65_536))
    rejected_max_bytes: int = setting(64 << 20, BROKER, AT_LEAST_1)
    # Each tenant's own ingest queue `ingest.<tenant>` (its devices' messages, before the
    # relay): a device of one tenant can fill only its tenant's.
    tenant_ingest_max_length: int = setting(250_000, BROKER, AT_LEAST_1)
    tenant_ingest_max_bytes: int = setting(128 << 20, BROKER, AT_LEAST_1)
    # RabbitMQ's max_message_size (scripts/services.sh, deploy/, the Ansible role: 128 KiB):
    # the broker closes the channel of a publisher that exceeds it. The relay never
    # publishes a bundle larger: a device batch is one bundle unless its readings alone
    # would exceed this (then split). Checked at start against the largest single reading.
    broker_max_message_bytes: int = setting(131_072, BROKER, Bound(low=4096, high=536_870_912))
    # Bulk provisioning (`POST /api/tenants/bulk`, `fairway tenant create-many`): most
    # tenants, and most devices, in one batch; the CLI splits a longer file into batches.
    provision_batch_max: int = setting(1000, BROKER, Bound(low=1, high=100_000))
    # "quorum" on a RabbitMQ cluster. (Ruff cannot tell the alias is immutable.)
    queue_type: QueueType = setting("classic", BROKER, OneOf(get_args(QueueType)))  # noqa: RUF009
    mongo_url: str = setting(
        "mongodb://127.0.0.1:27017/fairway",
        BROKER,
        Url(("mongodb", "mongodb+srv"), check_port=False),
    )
    # The PostgreSQL under FerretDB (scripts/services.sh's default): Fairway adds the GIN
    # indexes FerretDB's pushdown needs there. Empty: none (MongoDB, FerretDB on SQLite).
    postgres_url: str = setting("", BROKER, Url(("postgres", "postgresql"), optional=True))

    # -- message contract
    max_message_bytes: int = setting(65_536, CONTRACT, AT_LEAST_1)
    max_values: int = setting(64, CONTRACT, AT_LEAST_1)
    max_string_value: int = setting(256, CONTRACT, AT_LEAST_0)  # 0: no strings but ""
    max_message_id: int = setting(128, CONTRACT, AT_LEAST_1)
    # Readings one device message may carry (a JSON array or {"readings": [...]}); the
    # relay holds up to this many unconfirmed publishes per delivery.
    max_batch_readings: int = setting(100, CONTRACT, Bound(low=1, high=1000))
    max_clock_skew_s: float = setting(300.0, CONTRACT, AT_LEAST_0)  # 0: no future ts
    max_reading_age_s: float = setting(7 * 24 * 3600.0, CONTRACT, POSITIVE)
    rejected_body_bytes: int = setting(1024, CONTRACT, AT_LEAST_0)  # 0: keep no body

    # -- relay (a prefetch of 0 would mean "unlimited" to RabbitMQ, hence >= 1)
    relay_prefetch: int = setting(2000, RELAY, AT_LEAST_1)  # the shared `ingest`
    relay_tenant_prefetch: int = setting(100, RELAY, AT_LEAST_1)  # each `ingest.<tenant>`
    device_rate: float = setting(1000.0, RELAY, POSITIVE)  # readings per second
    device_burst: float = setting(2000.0, RELAY, Bound(low=1))  # a reading takes one token
    # A tenant's accepted readings per second in each relay, for tenants whose record sets
    # no max_rate (0: unlimited), and the burst, in readings, for tenants whose record sets
    # no max_burst (0: two seconds of the tenant's rate, at least max_batch_readings).
    tenant_rate: float = setting(0.0, RELAY, Bound(low=0, high=10_000_000))
    tenant_burst: float = setting(0.0, RELAY, Bound(low=0, high=100_000_000))
    device_cache_ttl_s: float = setting(30.0, RELAY, AT_LEAST_0)  # 0: no caching
    device_cache_size: int = setting(100_000, RELAY, AT_LEAST_1)
    # Refusals published to `rejected` per device and per tenant (token buckets); beyond
    # them a refusal is counted and acked but not kept, so one party cannot crowd out
    # everyone else's rejections.
    rejected_device_rate: float = setting(5.0, RELAY, POSITIVE)
    rejected_device_burst: float = setting(100.0, RELAY, Bound(low=1))
    rejected_tenant_rate: float = setting(50.0, RELAY, POSITIVE)
    rejected_tenant_burst: float = setting(1000.0, RELAY, Bound(low=1))
    # Refused deliveries acked beyond those budgets, per ingest queue and second, in units
    # of one per delivery plus one per KiB of its body: more are held unacked and released
    # at this pace, so a flooding tenant's queue fills its prefetch window and the broker
    # stops delivering it (the relay's CPU stays with the others).
    relay_refused_pace: float = setting(1000.0, RELAY, POSITIVE)
    # Device quarantine: a device refused beyond its refusal budget more than
    # quarantine_refusals times (readings) within quarantine_window_s (a token bucket of
    # that size refilled over the window, so a steady trickle never fills it) is
    # quarantined: its connections closed, its logins refused. The first period is
    # quarantine_s, doubled for each repeat offence while the last ended less than
    # quarantine_max_s ago, never above quarantine_max_s. 0 refusals: never.
    quarantine_refusals: int = setting(2000, RELAY, AT_LEAST_0)
    quarantine_window_s: float = setting(60.0, RELAY, POSITIVE)
    quarantine_s: float = setting(300.0, RELAY, POSITIVE)
    quarantine_max_s: float = setting(86_400.0, RELAY, POSITIVE)
    # Bundles: a tenant's accepted readings go to its tenant queue as one message of at
    # most this many readings and bytes (a reading alone may exceed the bytes: it is never
    # split), flushed when full or after the linger (0: on the I/O loop's next turn).
    # Keep the readings under FAIRWAY_RELAY_TENANT_PREFETCH, or a tenant's bundle only
    # ever leaves by linger.
    bundle_max_readings: int = setting(50, RELAY, Bound(low=1, high=1000))
    bundle_max_bytes: int = setting(65_536, RELAY, Bound(low=1024, high=65_536))
    bundle_linger_ms: float = setting(5.0, RELAY, Bound(low=0, high=1000))
    # A nack from a tenant queue means full, or (on a cluster) a quorum queue whose leader
    # was just lost: published again this many times, this far apart, before its
    # readings are refused as tenant_backlog_full.
    relay_nack_retries: int = setting(3, RELAY, Bound(low=0, high=20))
    relay_nack_retry_s: float = setting(0.5, RELAY, Bound(low=0.01, high=30))

    # -- scheduler
    scheduler_prefetch: int = setting(100, SCHEDULER, AT_LEAST_1)  # per tenant, no backlog
    scheduler_buffer: int = setting(3000, SCHEDULER, AT_LEAST_1)  # shared by weight if backlog
    # The same two bounds in readings (a message is a bundle of up to bundle_max_readings):
    # the floors together, and the backlogged tenants' shares together, hold about this
    # many readings at most (scheduler/prefetch.py).
    scheduler_buffer_readings: int = setting(100_000, SCHEDULER, Bound(low=1000, high=10_000_000))
    # A write batch starts at batch_size readings and grows up to batch_max while full
    # batches are written within write_budget_ms; a slower write shrinks it again, never
    # below batch_size (scheduler/batch_budget.py). Budget 0, or batch_max at most
    # batch_size: batches of batch_size, fixed.
    batch_size: int = setting(200, SCHEDULER, AT_LEAST_1)
    batch_max: int = setting(1000, SCHEDULER, Bound(low=1, high=10_000))
    write_budget_ms: float = setting(100.0, SCHEDULER, Bound(low=0, high=60_000))
    batch_linger_ms: float = setting(20.0, SCHEDULER, AT_LEAST_0)  # 0: write at once
    drr_quantum: int = setting(50, SCHEDULER, AT_LEAST_1)
    writers: int = setting(2, SCHEDULER, AT_LEAST_1)
    # While every writer is busy, one more batch may be written holding only *light*
    # tenants (at most this many readings buffered), so a quiet tenant's readings do not
    # wait for a backlogged tenant's batches; also its size bound. 0: no express batch.
    express_readings: int = setting(50, SCHEDULER, AT_LEAST_0)
    # While light tenants are active (an express batch in flight or ended less than
    # express_hold_ms ago), a regular batch holds at most batch_beside_express readings
    # (only beside a backlogged tenant: otherwise there is no flood to keep them from)
    # and at most writers_beside_express regular batches are written at once (those
    # already in flight finish): the express write shares the database with less of a
    # flood (docs/architecture.md, "Express priority"). 0: no cap / all the writers.
    # The cap unset: DEFAULT_BATCH_BESIDE_EXPRESS where it can act, else none
    # (`regular_batch_cap`); set, it must be able to act (checked at start). The writer
    # limit is off by default (measured: it halves the flood's served rate).
    batch_beside_express: int | None = setting(None, SCHEDULER, Bound(low=0, high=10_000), kind=int)
    writers_beside_express: int = setting(0, SCHEDULER, AT_LEAST_0)
    express_hold_ms: float = setting(250.0, SCHEDULER, Bound(low=0, high=60_000))
    tenant_refresh_s: float = setting(5.0, SCHEDULER, POSITIVE)
    # Channels the scheduler consumes tenant queues on (tenants spread over them; below
    # RabbitMQ's default channel_max of 2047 per connection).
    scheduler_channels: int = setting(16, SCHEDULER, Bound(low=1, high=2000))
    # Schedulers and relays read the whole tenant list this often (between, only what changed).
    tenant_resync_s: float = setting(300.0, SCHEDULER, POSITIVE)
    db_backoff_max_s: float = setting(5.0, SCHEDULER, POSITIVE)  # also monitor, archiver
    # device_state (latest values) is written at most this often per device; 0: every batch
    device_state_flush_s: float = setting(2.0, SCHEDULER, AT_LEAST_0)
    # Readings of one device batch (ids "<batch id>#<index>") are stored as one document
    # per batch and hour (fairway.kernel.batch_document); off: one document per reading.
    # Readers read both layouts either way.
    batch_documents: bool = setting(True, SCHEDULER)
    # The scheduler folds rollups in memory and writes an hour's parts this long after the
    # hour ends (readings arriving later are recomputed by the rollup task); at most an
    # hour, so parts exist before charts stop folding the hour from raw readings.
    rollup_flush_grace_s: float = setting(300.0, SCHEDULER, Bound(low=0, high=3600))
    # A scheduler silent this long is taken for lost: its unwritten hours are recomputed.
    rollup_writer_lease_s: float = setting(300.0, SCHEDULER, POSITIVE)
    # Figures (minute x metric) folded in memory at most; beyond, the oldest hour is left
    # to the rollup task (about 250 bytes each).
    rollup_max_cells: int = setting(400_000, SCHEDULER, AT_LEAST_1)

    # -- web app. The broker-auth endpoints answer only these networks (the broker's).
    web_host: str = setting("127.0.0.1", WEB, NonEmpty())
    web_port: int = setting(8080, WEB, PORT)
    broker_auth_networks: str = setting("127.0.0.1/32,::1/128", WEB, Networks())
    # Signs sessions, CSRF tokens and push tokens. Required: web and gateway refuse to
    # start without it (require_secret; make demo/test export a development key).
    secret_key: str = setting("", WEB)
    session_lifetime_s: float = setting(8 * 3600.0, WEB, POSITIVE)
    api_token_ttl_s: float = setting(30 * 24 * 3600.0, WEB, POSITIVE)
    # Login throttling per user name and per address: this many attempts are free, then
    # each one waits twice as long as the one before (1 s, 2 s, 4 s ...) up to the cap;
    # a record is forgotten this long after its last attempt.
    login_max_failures: int = setting(5, WEB, AT_LEAST_1)
    login_window_s: float = setting(300.0, WEB, POSITIVE)
    login_delay_max_s: float = setting(60.0, WEB, Bound(low=1, high=3600))
    # Password checks (argon2: 64 MiB and several threads each) running at once per web
    # process; as many more may wait up to FAIRWAY_LOGIN_WAIT_S for one, the rest get 503.
    # 0: half the host's cores, at least 1 (one argon2 check already uses several).
    login_concurrency: int = setting(0, WEB, Bound(low=0, high=64))
    login_wait_s: float = setting(5.0, WEB, Bound(low=0, high=60))
    # Login attempts per client address (any outcome; the address behind
    # FAIRWAY_PROXY_HOPS trusted proxies): a token bucket per web process, checked before
    # the throttle records and the password check; then 429 login_rate.
    login_addr_rate: float = setting(1.0, WEB, POSITIVE)  # per second
    login_addr_burst: float = setting(20.0, WEB, Bound(low=1))
    # Successful logins per user (each a new session and a password check): a bucket per
    # web process, checked before the password check and taken on success; then 429
    # login_rate. Only the password's holder can spend it.
    login_user_rate: float = setting(0.2, WEB, POSITIVE)  # per second
    login_user_burst: float = setting(10.0, WEB, Bound(low=1))
    # Request bodies beyond this answer 413 (Flask) or are cut off (waitress).
    web_max_body_bytes: int = setting(1_048_576, WEB, Bound(low=1024))
    # Device logins (RabbitMQ's HTTP auth backend): passwords are keyed hashes (HMAC-SHA256)
    # under this key; empty: derived from FAIRWAY_SECRET_KEY. Changing it invalidates every
    # device password hashed under the old one (see docs/security.md).
    device_hash_key: str = setting("", WEB)
    # Answers to device logins (both allow and deny) are remembered this long, this many.
    device_auth_cache_ttl_s: float = setting(10.0, WEB, Bound(low=0, high=300))
    device_auth_cache_size: int = setting(100_000, WEB, AT_LEAST_1)
    # The broker-auth endpoints (/broker/*) on their own port and thread pool, so a login
    # flood and UI load cannot starve each other; the web port then answers /broker/* 404.
    # RabbitMQ's auth_http.*_path must name this port. 0: served on the web port and pool.
    broker_auth_port: int = setting(8082, WEB, PORT)
    broker_auth_threads: int = setting(4, WEB, Bound(low=1, high=64))
    max_rules_per_tenant: int = setting(1000, WEB, AT_LEAST_1)  # alert rules, then 409
    # A device is online while connected, or while its newest stored reading is this recent.
    device_online_window_s: float = setting(300.0, WEB, POSITIVE)
    # The schedulers' Prometheus endpoints (http://host:port), read by the Tenants page
    # for lag quantiles; empty: the page shows the queueing estimate backlog / rate.
    scheduler_metrics_urls: str = setting(
        "", WEB, UrlList(("http", "https"), optional=True, same_path=False)
    )
    # Where devices connect, shown with new credentials (the device registry page's
    # snippets); empty: FAIRWAY_AMQP_URL's first address without its credentials, and
    # MQTT on that host, port 1883.
    device_amqp_url: str = setting("", WEB, Url(("amqp", "amqps"), optional=True))
    device_mqtt_url: str = setting("", WEB, Url(("mqtt", "mqtts"), optional=True))
    api_page_max: int = setting(1000, WEB, AT_LEAST_1)  # largest page of any list endpoint
    # Reverse proxies in front of the web app (nginx: 1): their X-Forwarded-For/-Proto
    # are trusted that many hops deep, so throttling sees the client's address.
    proxy_hops: int = setting(0, WEB, AT_LEAST_0)
    cookie_secure: bool = setting(False, WEB)  # session cookie only over HTTPS (behind TLS)

    # -- gateway: live notifications (Twisted, Server-Sent Events)
    gateway_host: str = setting("127.0.0.1", GATEWAY, NonEmpty())
    gateway_port: int = setting(8081, GATEWAY, PORT)
    # What browsers connect to; empty: http://host:port.
    gateway_public_url: str = setting("", GATEWAY, Url(("http", "https"), optional=True))
    push_token_ttl_s: float = setting(60.0, GATEWAY, POSITIVE)
    session_queue_max_length: int = setting(1000, GATEWAY, AT_LEAST_1)  # oldest dropped
    session_queue_message_ttl_ms: int = setting(60_000, GATEWAY, AT_LEAST_1)
    gateway_prefetch: int = setting(100, GATEWAY, AT_LEAST_1)
    gateway_client_buffer_bytes: int = setting(1_000_000, GATEWAY, AT_LEAST_1)  # then dropped
    gateway_heartbeat_s: float = setting(15.0, GATEWAY, POSITIVE)
    gateway_max_sessions: int = setting(2000, GATEWAY, AT_LEAST_1)  # RabbitMQ: 2047 channels
    # Streams one user, and one tenant, may hold open on a gateway process; then 429.
    gateway_max_sessions_per_user: int = setting(10, GATEWAY, AT_LEAST_1)
    gateway_max_sessions_per_tenant: int = setting(500, GATEWAY, AT_LEAST_1)
    # Push tokens are single-use: ids of used, unexpired tokens remembered (then 503).
    gateway_used_tokens_max: int = setting(100_000, GATEWAY, AT_LEAST_1)
    # Push tokens the web app mints per user (token bucket per web process); then 429.
    push_token_rate: float = setting(0.5, GATEWAY, POSITIVE)  # per second
    push_token_burst: float = setting(20.0, GATEWAY, Bound(low=1))
    # Origins allowed to open streams (CORS), comma-separated; empty: the web app's.
    gateway_allowed_origins: str = setting("", GATEWAY, Origins())
    events_enabled: bool = setting(True, GATEWAY)  # scheduler publishes telemetry events

    # -- monitor (device status, alert rules)
    monitor_prefetch: int = setting(500, MONITOR, AT_LEAST_1)
    # RabbitMQ's amq.rabbitmq.event lives in one vhost (event_exchange.vhost, default /).
    event_exchange_vhost: str = setting("/", MONITOR, NonEmpty())
    monitor_queue_max_length: int = setting(100_000, MONITOR, AT_LEAST_1)  # oldest dropped
    monitor_reconcile_s: float = setting(60.0, MONITOR, POSITIVE)  # re-check connections
    rules_cache_ttl_s: float = setting(5.0, MONITOR, AT_LEAST_0)  # rule changes apply within

    # -- archiver (rejected messages, queryable per device)
    rejections_per_device: int = setting(1000, ARCHIVER, AT_LEAST_1)  # kept per device
    archiver_batch_size: int = setting(500, ARCHIVER, AT_LEAST_1)  # per insert; prefetch 2x
    archiver_linger_ms: float = setting(200.0, ARCHIVER, AT_LEAST_0)  # longest wait to fill
    archiver_trim_interval_s: float = setting(30.0, ARCHIVER, POSITIVE)

    # -- jobs (Celery)
    # Empty: FAIRWAY_AMQP_URL. The job queues use AMQP features (max length, queue type).
    celery_broker_url: str = setting("", JOBS, UrlList(("amqp", "amqps", "pyamqp"), optional=True))
    # Time limits: 0 means no limit (tasks/celery_app.py passes `or None`).
    report_soft_time_limit_s: float = setting(300.0, JOBS, AT_LEAST_0)
    report_time_limit_s: float = setting(330.0, JOBS, AT_LEAST_0)
    report_max_readings: int = setting(5_000_000, JOBS, AT_LEAST_1)
    # Fraction of wall time a report or export keeps the database reading (1 = flat
    # out). Below 1 the job pauses between batches; FerretDB reads lazily, batch by
    # batch, so the pause frees the database for the web app (docs/benchmarks.md).
    report_db_share: float = setting(0.5, JOBS, SHARE)
    retention_interval_s: float = setting(3600.0, JOBS, POSITIVE)
    # a closed hour is rolled up this long after it ends (clock skew + the longest write)
    rollup_grace_s: float = setting(120.0, JOBS, AT_LEAST_0)
    # Tenant-days a rollup run compacts into day documents (long charts read them); each
    # reads the tenant-day's hourly rollups once. 0: none, charts read the hourly rollups.
    rollup_days_per_run: int = setting(8, JOBS, AT_LEAST_0)
    default_retention_days: int = setting(30, JOBS, AT_LEAST_1)  # 0 would delete everything
    # Device-hours one retention run deletes at most (a year's backlog spans several runs);
    # in steady state a run needs about two per device with readings.
    retention_max_hours: int = setting(20_000, JOBS, AT_LEAST_1)
    report_max_buckets: int = setting(1000, JOBS, AT_LEAST_1)  # bounds a report's size
    job_queue_max_length: int = setting(10_000, JOBS, AT_LEAST_1)  # per queue; then 503
    # Unfinished (queued or running) jobs per user and per tenant; beyond: 429 job_quota.
    jobs_max_per_user: int = setting(5, JOBS, AT_LEAST_1)
    jobs_max_per_tenant: int = setting(50, JOBS, AT_LEAST_1)
    # Deliveries of one job that may end with their worker process lost (killed, out of
    # memory); the next delivery fails the job (worker_lost) without running it.
    jobs_max_attempts: int = setting(3, JOBS, AT_LEAST_1)
    # Fair dispatch: a tenant's jobs wait in the database and at most this many of them
    # are in the `cpu` queue or running at once (docs/architecture.md, "Fair dispatch").
    jobs_dispatch_per_tenant: int = setting(1, JOBS, AT_LEAST_1)
    # Work-conserving: while no other tenant has a job waiting, a tenant may have jobs
    # released beyond its share until all tenants' released jobs reach this, never into
    # the reserve (the pool stops it at the cpu processes minus `reserved_processes`);
    # 0 or at most the share: never beyond the share.
    jobs_dispatch_idle_max: int = setting(0, JOBS, AT_LEAST_0)
    # The `cpu` worker processes of the deployment, every worker's pool together (compose:
    # FAIRWAY_CPU_WORKERS): released jobs of all tenants together hold at most this many,
    # so a released job never queues behind another tenant's in `cpu`.
    jobs_cpu_processes: int = setting(2, JOBS, AT_LEAST_1)
    # Of those, the last free ones go only to a tenant with no job released: a tenant
    # already running one never takes them, so another tenant's job starts at once (0: no
    # reserve; one tenant may then hold every process and the others wait a whole job).
    # Unset: one if a tenant's share leaves one outside it, else none (`reserved_processes`).
    jobs_reserved_processes: int | None = setting(None, JOBS, AT_LEAST_0, kind=int)
    # How often each worker's dispatcher sweeps (releases left waiting by a crash, gauges).
    jobs_dispatch_interval_s: float = setting(5.0, JOBS, POSITIVE)
    report_max_series: int = setting(10_000, JOBS, AT_LEAST_1)  # (metric, bucket) pairs
    job_ttl_s: float = setting(7 * 24 * 3600.0, JOBS, POSITIVE)  # results, records, files

    # -- logging and metrics (metrics port 0: no metrics HTTP server)
    metrics_port: int = setting(0, OBSERVABILITY, PORT)
    log_level: str = setting("INFO", OBSERVABILITY, LOG_LEVELS)

    def __post_init__(self) -> None:
        problems = _problems({f.name: getattr(self, f.name) for f in fields(self)}, {})
        if problems:
            raise SettingsError(problems)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``FAIRWAY_<FIELD>`` variables (upper case), apply ``overrides``, validate.

        Raises :class:`SettingsError` naming every variable that does not parse or
        breaks its rule, and ``TypeError`` for an override that is not a setting.
        """
        source: Mapping[str, str] = os.environ if env is None else env
        values: dict[str, Any] = {}
        raw_values: dict[str, str] = {}
        problems: dict[str, str] = {}
        for f in fields(cls):
            name = variable(f.name)
            raw = source.get(name)
            if raw is None or raw == "":
                continue
            kind = _kind(f.name)
            try:
                values[f.name] = _parse_bool(raw) if kind is bool else kind(raw)
            except ValueError:
                hint = " (true/false, yes/no, on/off, 1/0)" if kind is bool else ""
                problems[name] = f"{name}={raw!r} is not a valid {kind.__name__}{hint}"
                continue
            raw_values[f.name] = raw
        for key in overrides:  # an override replaces what the environment said
            raw_values.pop(key, None)
            problems.pop(variable(key), None)
        values.update(overrides)
        problems.update(_problems(values, raw_values))
        if problems:
            order = [variable(f.name) for f in fields(cls)]
            raise SettingsError({name: problems[name] for name in order if name in problems})
        return cls(**values)

    @property
    def amqp_urls(self) -> list[str]:
        """The broker addresses of ``amqp_url``, in the order they are tried."""
        return split_urls(self.amqp_url)

    @property
    def rabbitmq_mgmt_urls(self) -> list[str]:
        """The management API addresses of ``rabbitmq_mgmt_url``, in order."""
        return split_urls(self.rabbitmq_mgmt_url)

    @property
    def vhost(self) -> str:
        """The RabbitMQ virtual host named by ``amqp_url`` (``/`` when none)."""
        path = urllib.parse.urlsplit(self.amqp_urls[0]).path.lstrip("/")
        return urllib.parse.unquote(path) or "/"

    @property
    def reserved_processes(self) -> int:
        """The reserve in effect: ``jobs_reserved_processes``, or when unset
        :func:`default_reserve` (one process, or none where a share leaves none over)."""
        if self.jobs_reserved_processes is not None:
            return self.jobs_reserved_processes
        return default_reserve(self.jobs_cpu_processes, self.jobs_dispatch_per_tenant)

    @property
    def regular_batch_cap(self) -> int:
        """The cap in effect on a regular batch while light tenants are active:
        ``batch_beside_express``, or when unset :func:`default_batch_cap` (0: none)."""
        if self.batch_beside_express is not None:
            return self.batch_beside_express
        return default_batch_cap(
            self.express_readings, self.batch_size, self.batch_max, self.write_budget_ms
        )

    def require_secret(self) -> str:
        """The signing key, or a clear error for processes that cannot run without one."""
        if len(self.secret_key) < 16:
            raise RuntimeError(
                "FAIRWAY_SECRET_KEY must be set (at least 16 characters) to sign sessions "
                "and push tokens; generate one with: python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'"
            )
        return self.secret_key

    def environ(self) -> dict[str, str]:
        """These settings as ``FAIRWAY_*`` variables, to hand to a child process."""
        # An unset setting goes as "", which from_env reads as unset.
        return {variable(f.name): _environ_value(getattr(self, f.name)) for f in fields(self)}


def _environ_value(value: Any) -> str:
    return "" if value is None else str(value)


def default_reserve(processes: int, per_tenant: int) -> int:
    """The reserve when ``FAIRWAY_JOBS_RESERVED_PROCESSES`` is unset: one process if a
    tenant's share leaves one outside it, else none (one process: no reserve, as before)."""
    return max(0, min(1, processes - per_tenant))


# Measured under a 100x flood (sessions 11-12): the quiet tenants' p99 1.49-1.94x
# unloaded (2.7-3.6x without a cap), the flooding tenant served 22-43 % slower while they
# write beside it; no cost measured in end_to_end's drains at scale 1 (docs/benchmarks.md,
# "Express priority").
DEFAULT_BATCH_BESIDE_EXPRESS = 100


def largest_batch(batch_size: int, batch_max: int, write_budget_ms: float) -> int:
    """The most readings a regular batch may hold: ``batch_max`` while the write budget
    lets batches grow, else (no budget, or a maximum not above the size) ``batch_size``."""
    return batch_max if write_budget_ms and batch_max > batch_size else batch_size


def default_batch_cap(
    express_readings: int, batch_size: int, batch_max: int, write_budget_ms: float
) -> int:
    """The cap when ``FAIRWAY_BATCH_BESIDE_EXPRESS`` is unset: the default where it can
    act, else 0 (no express batches, or no batch ever above it: nothing to cap)."""
    largest = largest_batch(batch_size, batch_max, write_budget_ms)
    if not express_readings or largest <= DEFAULT_BATCH_BESIDE_EXPRESS:
        return 0
    return DEFAULT_BATCH_BESIDE_EXPRESS


# -- reading and checking -------------------------------------------------------------
@dataclass(frozen=True)
class Variable:
    """One setting as an operator sees it: variable name, default, section and rule."""

    name: str
    attribute: str
    default: Any
    section: str
    rule: str


def variable(attribute: str) -> str:
    """The environment variable of a setting: ``batch_size`` -> ``FAIRWAY_BATCH_SIZE``."""
    return ENV_PREFIX + attribute.upper()


def variables() -> list[Variable]:
    """Every setting in declaration order (grouped by section)."""
    found = []
    for f in fields(Settings):
        rule: Rule | None = f.metadata["rule"]
        described = rule.describe() if rule is not None else "any " + _kind(f.name).__name__
        found.append(
            Variable(variable(f.name), f.name, f.default, f.metadata["section"], described)
        )
    return found


def table() -> str:
    """A Markdown table of every variable with its default and rule, by section."""
    lines = ["| variable | default | allowed |", "| --- | --- | --- |"]
    for section in SECTIONS:
        lines.append(f"| **{section}** | | |")
        for v in variables():
            if v.section == section:
                default = "unset" if v.default is None else f"`{v.default}`"
                lines.append(f"| `{v.name}` | {default} | {v.rule} |")
    return "\n".join(lines)


_KINDS: dict[str, type] = {f.name: f.metadata["kind"] for f in fields(Settings)}


def _kind(attribute: str) -> type:
    return _KINDS[attribute]


def _is_kind(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


_PASSWORD = re.compile(r"(//[^:/@]*):[^@/]*@")


def _shown(value: Any) -> str:
    # Values are echoed into logs: never a URL's password.
    return repr(_PASSWORD.sub(r"\1:***@", value)) if isinstance(value, str) else repr(value)


def _problems(values: Mapping[str, Any], raw_values: Mapping[str, str]) -> dict[str, str]:
    """Each variable in ``values`` whose value is of the wrong type or breaks its rule.

    ``raw_values`` holds the strings read from the environment, shown in the message
    instead of the parsed value so the operator sees what they wrote.
    """
    problems: dict[str, str] = {}
    for f in fields(Settings):
        if f.name not in values:
            continue
        name, value, kind = variable(f.name), values[f.name], _kind(f.name)
        if value is None and f.default is None:
            continue  # unset: derived from the others
        shown = _shown(raw_values.get(f.name, value))
        if not _is_kind(value, kind):
            problems[name] = f"{name}={shown} is not a valid {kind.__name__}"
            continue
        rule: Rule | None = f.metadata["rule"]
        why = rule.problem(value) if rule is not None else None
        if why is not None:
            problems[name] = f"{name}={shown} {why}"
    base, top = values.get("quarantine_s"), values.get("quarantine_max_s")
    if (
        not problems
        and isinstance(base, int | float)
        and isinstance(top, int | float)
        and top < base
    ):
        problems[variable("quarantine_max_s")] = (
            f"FAIRWAY_QUARANTINE_MAX_S={_shown(top)} is below FAIRWAY_QUARANTINE_S ({base:g})"
        )
    problems.update({} if problems else _message_size_problems(values))
    problems.update({} if problems else _pool_problems(values))
    problems.update({} if problems else _express_problems(values))
    web, auth = values.get("web_port"), values.get("broker_auth_port")
    if not problems and auth and auth == web:
        problems[variable("broker_auth_port")] = (
            f"FAIRWAY_BROKER_AUTH_PORT={_shown(auth)} is FAIRWAY_WEB_PORT too: choose another "
            "port, or 0 to answer the broker on the web port"
        )
    return problems


# What the relay adds to a single reading's body in its bundle (ingest/bundler.py): the
# bundle's head and tail (tenant id), the part's device, stream, id and receipt time
# fields, the ts as a float (tests/unit/test_bundler.py builds the worst case).
BUNDLE_FIXED_GROWTH = 512
# A JSON number grows at most this much re-serialised (``1e15`` -> ``1000000000000000.0``).
NUMBER_GROWTH = 14


def largest_single_bundle(max_message_bytes: int, max_values: int, max_message_id: int) -> int:
    """The largest bundle body one single-reading message can make: its body, each value
    re-serialised longer, its id from the AMQP property (each character escaped, at
    worst), the bundle's own fields."""
    return max_message_bytes + NUMBER_GROWTH * max_values + 2 * max_message_id + BUNDLE_FIXED_GROWTH


def _message_size_problems(values: Mapping[str, Any]) -> dict[str, str]:
    """Bundle bounds the broker's message size would refuse: the relay's channel would be
    closed by every such bundle, and its deliveries redelivered to do it again."""
    names = (
        "broker_max_message_bytes",
        "bundle_max_bytes",
        "max_message_bytes",
        "max_values",
        "max_message_id",
    )
    if not all(isinstance(values.get(n), int) for n in names):
        return {}  # checked once every value is known (the dataclass's own check)
    broker, bundle, message, count, ids = (int(values[n]) for n in names)
    name = variable("broker_max_message_bytes")
    if bundle > broker:
        return {
            name: f"{name}={broker} is below FAIRWAY_BUNDLE_MAX_BYTES ({bundle}): the broker "
            "would refuse the relay's bundles; raise it (and the broker's max_message_size)"
        }
    single = largest_single_bundle(message, count, ids)
    if single > broker:
        return {
            name: f"{name}={broker} is below the largest bundle of one reading ({single} bytes:"
            f" FAIRWAY_MAX_MESSAGE_BYTES {message}, FAIRWAY_MAX_VALUES {count},"
            f" FAIRWAY_MAX_MESSAGE_ID {ids}): the broker would refuse it; raise it (and the"
            " broker's max_message_size) or lower those"
        }
    return {}


def _pool_problems(values: Mapping[str, Any]) -> dict[str, str]:
    """A reserve the operator set against the job pool's other settings: it must leave
    processes for tenants already running a job, and one tenant's share outside it. (An
    unset reserve is :func:`default_reserve`, which always fits.)"""
    names = ("jobs_cpu_processes", "jobs_reserved_processes", "jobs_dispatch_per_tenant")
    if not all(isinstance(values.get(n), int) for n in names):
        return {}  # unset, or checked once every value is known (the dataclass's own check)
    processes, reserved, share = (int(values[n]) for n in names)
    if reserved >= processes:
        return {
            variable("jobs_reserved_processes"): (
                f"FAIRWAY_JOBS_RESERVED_PROCESSES={reserved} must be below "
                f"FAIRWAY_JOBS_CPU_PROCESSES ({processes}): no job could run beside another; "
                "lower it, or leave it unset for one process kept where the share allows"
            )
        }
    if share > processes - reserved:
        return {
            variable("jobs_reserved_processes"): (
                f"FAIRWAY_JOBS_RESERVED_PROCESSES={reserved} leaves "
                f"{processes - reserved} of the FAIRWAY_JOBS_CPU_PROCESSES ({processes}) "
                f"cpu processes outside the reserve, fewer than "
                f"FAIRWAY_JOBS_DISPATCH_PER_TENANT ({share}): one tenant would hold every "
                "process another tenant's job needs; lower it (or the share), add processes, "
                "or leave it unset"
            )
        }
    return {}


def _express_problems(values: Mapping[str, Any]) -> dict[str, str]:
    """Express priority settings the operator set that could never act: set while
    express batches are off, a writer limit not below the writers, a cap not below the
    largest batch. (An unset cap is :func:`default_batch_cap`, which never acts where it
    cannot.)"""
    names = ("express_readings", "writers", "writers_beside_express", "batch_size", "batch_max")
    budget = values.get("write_budget_ms")
    if not all(isinstance(values.get(n), int) for n in names) or budget is None:
        return {}  # checked once every value is known (the dataclass's own check)
    express, writers, beside, size, top = (int(values[n]) for n in names)
    cap = values.get("batch_beside_express") or 0  # unset: the default, nothing to check
    largest = largest_batch(size, top, budget)
    problems: dict[str, str] = {}
    for name, value in (("writers_beside_express", beside), ("batch_beside_express", cap)):
        if value and not express:
            problems[variable(name)] = (
                f"{variable(name)}={value} acts only beside express batches, and "
                "FAIRWAY_EXPRESS_READINGS=0 turns them off: set one, or unset this"
            )
    if not problems and beside and beside >= writers:
        problems[variable("writers_beside_express")] = (
            f"FAIRWAY_WRITERS_BESIDE_EXPRESS={beside} is not below FAIRWAY_WRITERS "
            f"({writers}): it would never hold a writer back; lower it, or 0 for off"
        )
    if not problems and cap and largest and cap >= largest:
        problems[variable("batch_beside_express")] = (
            f"FAIRWAY_BATCH_BESIDE_EXPRESS={cap} is not below the largest batch "
            f"(FAIRWAY_BATCH_MAX/FAIRWAY_BATCH_SIZE, {largest}): it would never hold a batch "
            "back; lower it, or 0 for off"
        )
    return problems


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


if __name__ == "__main__":
    print(table())
