"""Settings read from environment variables, each with a sane default.

Every limit the pipeline enforces is one variable here, so an operator can see
and change all of them in one place (the README's configuration table lists them).
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, fields
from typing import Any

ENV_PREFIX = "FAIRWAY_"


@dataclass(frozen=True)
class Settings:
    """Process-wide configuration; build it with :meth:`from_env`."""

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    mongo_url: str = "mongodb://127.0.0.1:27017/fairway"

    # Queue bounds (messages). Overflow is refused at publish time and counted.
    ingest_max_length: int = 1_000_000
    tenant_max_backlog: int = 1_000_000
    rejected_max_length: int = 100_000
    queue_type: str = "classic"  # "quorum" on a RabbitMQ cluster

    # Message contract.
    max_message_bytes: int = 65_536
    max_values: int = 64
    max_string_value: int = 256
    max_message_id: int = 128
    max_clock_skew_s: float = 300.0
    max_reading_age_s: float = 7 * 24 * 3600.0
    rejected_body_bytes: int = 1024

    # Relay.
    relay_prefetch: int = 2000
    relay_confirm_window: int = 2000
    device_rate: float = 1000.0
    device_burst: float = 2000.0
    device_cache_ttl_s: float = 30.0
    device_cache_size: int = 100_000

    # Scheduler.
    scheduler_prefetch: int = 100  # per tenant channel when not backlogged
    scheduler_buffer: int = 3000  # shared by weight among backlogged tenants
    batch_size: int = 200
    batch_linger_ms: float = 20.0
    drr_quantum: int = 50
    writers: int = 2
    tenant_refresh_s: float = 5.0
    db_backoff_max_s: float = 5.0

    # Web app. The broker-auth endpoints answer only these networks (the broker's).
    web_host: str = "127.0.0.1"
    web_port: int = 8080
    broker_auth_networks: str = "127.0.0.1/32,::1/128"
    # Signs sessions, CSRF tokens and push tokens. Required: web and gateway refuse to
    # start without it (make demo/test export a development key).
    secret_key: str = ""
    session_lifetime_s: float = 8 * 3600.0
    api_token_ttl_s: float = 30 * 24 * 3600.0
    login_max_failures: int = 5  # per user name and per client address ...
    login_window_s: float = 300.0  # ... within this window, then 429 until it passes
    api_page_max: int = 1000  # largest page of any list endpoint
    # Reverse proxies in front of the web app (nginx: 1): their X-Forwarded-For/-Proto
    # are trusted that many hops deep, so throttling sees the client's address.
    proxy_hops: int = 0
    cookie_secure: bool = False  # session cookie only over HTTPS (true behind TLS)
    # Used to close a disabled device's open connections at once.
    rabbitmq_mgmt_url: str = "http://guest:guest@127.0.0.1:15672"

    # Live notifications: push gateway (Twisted, Server-Sent Events).
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8081
    gateway_public_url: str = ""  # what browsers connect to; default http://host:port
    push_token_ttl_s: float = 60.0
    session_queue_max_length: int = 1000  # per browser session; oldest dropped beyond
    session_queue_message_ttl_ms: int = 60_000
    gateway_prefetch: int = 100
    gateway_client_buffer_bytes: int = 1_000_000  # a client this far behind is dropped
    gateway_heartbeat_s: float = 15.0
    gateway_max_sessions: int = 2000  # one AMQP channel each; RabbitMQ allows 2047
    # Origins allowed to open streams (CORS), comma-separated; default the web app's.
    gateway_allowed_origins: str = ""
    events_enabled: bool = True  # scheduler publishes coalesced telemetry events

    # Monitor (device status, alert rules) and rejections archiver.
    monitor_prefetch: int = 500
    rejections_per_device: int = 1000  # archived rejections kept per device
    # RabbitMQ's amq.rabbitmq.event lives in one vhost (event_exchange.vhost, default /).
    event_exchange_vhost: str = "/"
    monitor_queue_max_length: int = 100_000  # each monitor queue; oldest dropped beyond
    monitor_reconcile_s: float = 60.0  # re-check open connections with the management API
    rules_cache_ttl_s: float = 5.0  # alert rule changes apply within this time
    archiver_batch_size: int = 500  # rejections per insert (and the archiver's prefetch)
    archiver_linger_ms: float = 200.0  # longest wait to fill an insert
    archiver_trim_interval_s: float = 30.0  # how often rejections beyond the cap are trimmed

    # Celery jobs.
    celery_broker_url: str = ""  # default: FAIRWAY_AMQP_URL
    report_soft_time_limit_s: float = 300.0
    report_time_limit_s: float = 330.0
    report_max_readings: int = 5_000_000
    # Fraction of wall time a report or export keeps the database reading (1 = flat
    # out). Below 1 the job pauses between batches; FerretDB reads lazily, batch by
    # batch, so the pause frees the database for the web app (docs/benchmarks.md).
    report_db_share: float = 0.5
    retention_interval_s: float = 3600.0
    default_retention_days: int = 30
    report_max_buckets: int = 1000  # time buckets in one report (bounds the result size)
    job_queue_max_length: int = 10_000  # per Celery queue; a job beyond it answers 503
    job_ttl_s: float = 7 * 24 * 3600.0  # results, job records and export files kept this long

    # Observability (0 disables the metrics HTTP server).
    metrics_port: int = 0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``FAIRWAY_<FIELD>`` variables (upper case), then apply ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is None or raw == "":
                continue
            kind = type(field.default)
            try:
                values[field.name] = _parse_bool(raw) if kind is bool else kind(raw)
            except ValueError as exc:
                raise ValueError(
                    f"{ENV_PREFIX}{field.name.upper()}={raw!r} is not a valid {kind.__name__}"
                ) from exc
        values.update(overrides)
        return cls(**values)

    @property
    def vhost(self) -> str:
        """The RabbitMQ virtual host named by ``amqp_url`` (``/`` when none)."""
        path = urllib.parse.urlsplit(self.amqp_url).path.lstrip("/")
        return urllib.parse.unquote(path) or "/"

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
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
