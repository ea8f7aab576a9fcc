"""RabbitMQ's HTTP auth backend, answered from the device registry.

RabbitMQ (``rabbitmq_auth_backend_http`` behind ``rabbitmq_auth_backend_cache``,
after the internal backend that holds Fairway's own service accounts) POSTs here for
every device login and permission check. A device:

* logs in with its id and its current password (a keyed hash in ``devices``, compared
  in constant time; see :mod:`fairway.storage.registry`), and only while enabled and
  not quarantined (``device_quarantined``: a relay found it flooding refusals beyond its
  budget, :mod:`fairway.storage.quarantine`; read from the database at each login, never
  cached here, so a lift applies at once);
* may use only the vhost of ``FAIRWAY_AMQP_URL``;
* may only *write* to the ``telemetry`` exchange;
* may only publish routing keys ``<its id>.<stream>`` (MQTT topics ``<id>/<stream>``
  arrive here already translated to ``<id>.<stream>``);
* over MQTT, may only use the client id ``<its id>`` or ``<its id>.<suffix>``: RabbitMQ
  (3.10) closes an MQTT connection when another one opens with the same client id on
  the vhost, so without this rule any device could kick any other off, in a loop.
  RabbitMQ sends the MQTT client id as ``client_id`` with the login; AMQP logins carry
  none. The separator is ``.`` because ids cannot contain it: with ``-``, device ``a``
  could claim ``a-b``, the id of device ``a-b``.

Only callers in ``FAIRWAY_BROKER_AUTH_NETWORKS`` (the broker) are answered; anyone
else gets 403, so these endpoints cannot be used to guess device passwords.

Everything else is denied. Answers are ``allow`` or ``deny`` with HTTP 200, as the
plugin expects; every decision is counted by check and outcome, every refused login by
reason and tenant.

A login flood must cost almost nothing: reserved names (service accounts) are refused
without a lookup; each device's credential record is cached for
``FAIRWAY_DEVICE_AUTH_CACHE_TTL_S`` (bounded by ``FAIRWAY_DEVICE_AUTH_CACHE_SIZE``), so a
wrong password costs one HMAC; a repeated wrong password against a legacy argon2 hash is
answered from a cache of refusals. Disabling or rotating a device through this process
forgets its entry at once; other web processes notice within the TTL.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
import time

from cachetools import TTLCache
from flask import Blueprint, abort, current_app, request
from prometheus_client import Counter

from fairway.kernel import topology
from fairway.kernel.contract import split_routing_key
from fairway.kernel.ids import RESERVED_ID, is_reserved_id, is_valid_id
from fairway.kernel.reasons import Rejection
from fairway.kernel.settings import Settings
from fairway.storage import quarantine, registry
from web.database import get_db

bp = Blueprint("broker_auth", __name__, url_prefix="/broker")
log = logging.getLogger(__name__)
CLIENT_ID_MISMATCH = "client_id_mismatch"

DECISIONS = Counter(
    "fairway_broker_auth_decisions_total",
    "Answers to RabbitMQ's HTTP auth backend",
    ["check", "decision"],
)
LOGIN_REFUSED = Counter(
    "fairway_broker_auth_refused_total",
    "Device logins refused, by reason (reserved_id, unknown_device, device_disabled, "
    "bad_password, device_quarantined, client_id_mismatch) and the device's tenant (empty"
    " when unknown)",
    ["reason", "tenant"],
)


class DeviceAuthCache:
    """Credential records and refused (device, password digest) pairs, bounded, thread-safe."""

    def __init__(self, ttl_s: float, size: int) -> None:
        self.enabled = ttl_s > 0
        self._lock = threading.Lock()
        self._records: TTLCache[str, registry.Credential] = TTLCache(size, ttl_s or 1)
        self._refused: TTLCache[tuple[str, bytes], str] = TTLCache(size, ttl_s or 1)

    def credential(self, device_id: str) -> registry.Credential:
        """The device's record, from the cache or (then cached) the database."""
        with self._lock:
            found = self._records.get(device_id) if self.enabled else None
        if found is None:
            found = registry.device_credential(get_db(), device_id)
            if self.enabled:
                with self._lock:
                    self._records[device_id] = found
        return found

    def refused(self, device_id: str, digest: bytes) -> str | None:
        """The reason this exact password was refused lately, if it was."""
        with self._lock:
            return self._refused.get((device_id, digest)) if self.enabled else None

    def remember_refusal(self, device_id: str, digest: bytes, reason: str) -> None:
        """Answer this (device, password) from memory for the TTL."""
        if self.enabled:
            with self._lock:
                self._refused[(device_id, digest)] = reason

    def forget(self, device_id: str) -> None:
        """Drop the device's record (after a change to it)."""
        with self._lock:
            self._records.pop(device_id, None)
            for key in [k for k in self._refused if k[0] == device_id]:
                self._refused.pop(key, None)


def _cache() -> DeviceAuthCache:
    cache = current_app.extensions.get("fairway_device_auth")
    if cache is None:
        settings = current_app.config["FAIRWAY_SETTINGS"]
        cache = current_app.extensions.setdefault(
            "fairway_device_auth",
            DeviceAuthCache(settings.device_auth_cache_ttl_s, settings.device_auth_cache_size),
        )
    return cache


def forget_device(device_id: str) -> None:
    """Forget what this process cached about ``device_id`` (disabled, rotated)."""
    _cache().forget(device_id)


def hash_key(settings: Settings) -> bytes | None:
    """The key of device password hashes for these settings."""
    return registry.device_hash_key(settings.device_hash_key, settings.secret_key)


@bp.before_request
def only_the_broker() -> None:
    """Refuse callers outside ``FAIRWAY_BROKER_AUTH_NETWORKS``: no password guessing here."""
    settings = current_app.config["FAIRWAY_SETTINGS"]
    networks = [ipaddress.ip_network(n.strip()) for n in settings.broker_auth_networks.split(",")]
    try:
        caller = ipaddress.ip_address(peer_address())
    except ValueError:
        abort(403)
    if not any(caller in network for network in networks):
        DECISIONS.labels("caller", "deny").inc()
        abort(403)


def peer_address() -> str:
    """The TCP peer, never an X-Forwarded-For value (ProxyFix keeps the original)."""
    original = request.environ.get("werkzeug.proxy_fix.orig", {})
    return original.get("REMOTE_ADDR") or request.remote_addr or ""


def _answer(check: str, allowed: bool) -> str:
    decision = "allow" if allowed else "deny"
    DECISIONS.labels(check, decision).inc()
    return decision


def _enabled_device(device_id: str) -> registry.Device | None:
    device = registry.find_devices(get_db(), [device_id])[device_id]
    return device if device is not None and device.enabled and device.tenant_known else None


def _fairway_vhost() -> str:
    return current_app.config["FAIRWAY_SETTINGS"].vhost


def _refuse_login(reason: str, tenant: str | None) -> str:
    LOGIN_REFUSED.labels(reason, tenant or "").inc()
    return _answer("user", False)


@bp.post("/user")
def user() -> str:
    """Authenticate a device by id and password (and, over MQTT, its client id)."""
    form = request.form
    device_id, password = form.get("username", ""), form.get("password", "")
    if is_reserved_id(device_id):
        return _refuse_login(RESERVED_ID, None)  # a service account: never a device
    if not is_valid_id(device_id):
        return _refuse_login("unknown_device", None)
    cache = _cache()
    digest = hashlib.sha256(password.encode()).digest()
    credential = cache.credential(device_id)
    known = cache.refused(device_id, digest)
    if known is not None:
        return _refuse_login(known, credential.tenant)
    key = hash_key(current_app.config["FAIRWAY_SETTINGS"])
    verdict = registry.check_password(credential, password, key)
    if not verdict.ok:
        cache.remember_refusal(device_id, digest, verdict.reason)
        return _refuse_login(verdict.reason, credential.tenant)
    if verdict.migrate and key is not None:
        registry.migrate_password_hash(get_db(), credential, password, key)
        cache.forget(device_id)
    if quarantine.active(get_db(), device_id, time.time()) is not None:
        # After the password: only the device itself learns that it is quarantined.
        return _refuse_login(quarantine.REASON, credential.tenant)
    client_id = form.get("client_id")  # MQTT only (RabbitMQ 3.10 sends it with the login)
    if client_id is not None and not client_id_allowed(device_id, client_id):
        # Not cached as a refusal: that cache keys on the password, not the client id.
        log.warning(
            "MQTT login refused: client id not the device's",
            extra={
                "reason": CLIENT_ID_MISMATCH,
                "device": device_id,
                "tenant": credential.tenant,
                "client_id": client_id[:100],
            },
        )
        return _refuse_login(CLIENT_ID_MISMATCH, credential.tenant)
    return _answer("user", True)


def client_id_allowed(device_id: str, client_id: str) -> bool:
    """An MQTT client id a device may use: ``<its id>`` or ``<its id>.<suffix>``."""
    return client_id == device_id or (
        client_id.startswith(device_id + ".") and len(client_id) > len(device_id) + 1
    )


@bp.post("/vhost")
def vhost() -> str:
    """A device may open only Fairway's vhost."""
    form = request.form
    ok = form.get("vhost") == _fairway_vhost() and _enabled_device(form.get("username", ""))
    return _answer("vhost", bool(ok))


@bp.post("/resource")
def resource() -> str:
    """A device may only write to the ``telemetry`` exchange."""
    form = request.form
    ok = (
        form.get("resource") == "exchange"
        and form.get("name") == topology.TELEMETRY
        and form.get("permission") == "write"
        and form.get("vhost") == _fairway_vhost()
    )
    return _answer("resource", ok)


@bp.post("/topic")
def topic() -> str:
    """A device may only publish routing keys ``<its id>.<stream>``."""
    form = request.form
    if form.get("name") != topology.TELEMETRY or form.get("permission") != "write":
        return _answer("topic", False)
    try:
        device, _stream = split_routing_key(form.get("routing_key", ""))
    except Rejection:
        return _answer("topic", False)
    return _answer("topic", device == form.get("username"))
