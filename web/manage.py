"""The management pages: the device registry and users (admins and operators).

The pages are server-rendered shells; what they show and change goes through the JSON
API (``/api/devices``, ``/api/users``) with the session's CSRF token, like every other
page. Viewers get a 403 page without any control.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from flask import Blueprint, current_app, g, render_template

from fairway.kernel.settings import Settings
from fairway.storage import accounts
from web.pages import page_login_required

bp = Blueprint("manage", __name__)
MANAGERS = (accounts.OPERATOR, accounts.ADMIN)
AMQP_PORTS = {"amqp": 5672, "amqps": 5671}
MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def device_access(settings: Settings) -> dict[str, Any]:
    """Where devices connect, for the snippets shown with new credentials (no secret).

    ``FAIRWAY_DEVICE_AMQP_URL``/``FAIRWAY_DEVICE_MQTT_URL`` when set; else the first
    address of ``FAIRWAY_AMQP_URL`` without its credentials, and MQTT on its host, 1883.
    A device URL without a path means Fairway's own vhost.
    """
    amqp = urllib.parse.urlsplit(settings.device_amqp_url or settings.amqp_urls[0])
    amqp_host = amqp.hostname or "127.0.0.1"
    path = amqp.path.lstrip("/")
    vhost = urllib.parse.unquote(path) if path else settings.vhost
    if settings.device_mqtt_url:
        mqtt = urllib.parse.urlsplit(settings.device_mqtt_url)
        mqtt_scheme, mqtt_host = mqtt.scheme, mqtt.hostname or amqp_host
        mqtt_port = mqtt.port or MQTT_PORTS[mqtt.scheme]
    else:
        mqtt_scheme, mqtt_host, mqtt_port = "mqtt", amqp_host, MQTT_PORTS["mqtt"]
    return {
        "amqp": {
            "tls": amqp.scheme == "amqps",
            "host": amqp_host,
            "port": amqp.port or AMQP_PORTS[amqp.scheme],
            "vhost": vhost,
        },
        "mqtt": {"tls": mqtt_scheme == "mqtts", "host": mqtt_host, "port": mqtt_port},
        "exchange": "telemetry",
    }


def _forbidden(what: str) -> tuple[str, int]:
    return render_template("forbidden.html", what=what), 403


@bp.get("/registry")
@page_login_required
def registry_page() -> str | tuple[str, int]:
    """Register devices (credentials shown once), disable, enable, rotate."""
    if g.user.role not in MANAGERS:
        return _forbidden("the device registry")
    settings = current_app.config["FAIRWAY_SETTINGS"]
    arg = {"role": g.user.role, "tenant": g.user.tenant, "access": device_access(settings)}
    return render_template("registry.html", arg=arg)


@bp.get("/users")
@page_login_required
def users_page() -> str | tuple[str, int]:
    """Users and their roles: admins their tenant's, operators everyone's."""
    if g.user.role not in MANAGERS:
        return _forbidden("users")
    arg = {"role": g.user.role, "tenant": g.user.tenant, "me": g.user.id}
    return render_template("users.html", arg=arg, min_password=accounts.MIN_PASSWORD)
