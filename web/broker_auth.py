"""RabbitMQ's HTTP auth backend, answered from the device registry.

RabbitMQ (``rabbitmq_auth_backend_http`` behind ``rabbitmq_auth_backend_cache``,
after the internal backend that holds Fairway's own service accounts) POSTs here for
every device login and permission check. A device:

* logs in with its id and its current password (argon2 hash in ``devices``), and only
  while enabled;
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
plugin expects; every decision is counted by check and outcome.
"""

from __future__ import annotations

import ipaddress
import logging

from flask import Blueprint, abort, current_app, request
from prometheus_client import Counter

from fairway.kernel import topology
from fairway.kernel.contract import split_routing_key
from fairway.kernel.reasons import Rejection
from fairway.storage import registry
from web.database import get_db

bp = Blueprint("broker_auth", __name__, url_prefix="/broker")
log = logging.getLogger(__name__)

DECISIONS = Counter(
    "fairway_broker_auth_decisions_total",
    "Answers to RabbitMQ's HTTP auth backend",
    ["check", "decision"],
)
CLIENT_ID_REFUSED = Counter(
    "fairway_broker_auth_client_id_refused_total",
    "MQTT logins with the right password refused for their client id",
    ["tenant", "reason"],  # client_id_mismatch
)


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


@bp.post("/user")
def user() -> str:
    """Authenticate a device by id and password (and, over MQTT, its client id)."""
    form = request.form
    username = form.get("username", "")
    ok = registry.verify_device_password(get_db(), username, form.get("password", ""))
    client_id = form.get("client_id")
    if ok and client_id is not None and not client_id_allowed(username, client_id):
        _refuse_client_id(username, client_id)
        ok = False
    return _answer("user", ok)


def client_id_allowed(device_id: str, client_id: str) -> bool:
    """An MQTT client id a device may use: ``<its id>`` or ``<its id>.<suffix>``."""
    return client_id == device_id or (
        client_id.startswith(device_id + ".") and len(client_id) > len(device_id) + 1
    )


def _refuse_client_id(device_id: str, client_id: str) -> None:
    device = registry.find_devices(get_db(), [device_id])[device_id]
    tenant = device.tenant if device is not None else ""
    CLIENT_ID_REFUSED.labels(tenant, "client_id_mismatch").inc()
    log.warning(
        "MQTT login refused: client id not the device's",
        extra={
            "reason": "client_id_mismatch",
            "device": device_id,
            "tenant": tenant,
            "client_id": client_id[:100],
        },
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
