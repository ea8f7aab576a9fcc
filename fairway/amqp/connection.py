"""Connection parameters and short-lived blocking connections to the broker.

``amqps://`` URLs connect over TLS and always verify the broker: its certificate must
chain to ``FAIRWAY_AMQP_CA_FILE`` (or to a system CA when that is empty) and name the
URL's host. Every broker client of Fairway takes its TLS from here: pika's blocking and
select connections (:func:`parameters`), the gateway's Twisted endpoint
(:func:`ca_certificates_pem`) and Celery/kombu (:func:`kombu_ssl`).
"""

from __future__ import annotations

import re
import ssl
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from fairway.kernel import topology
from fairway.kernel.settings import Settings


def uses_tls(url: str) -> bool:
    """True for an ``amqps://`` URL."""
    return urllib.parse.urlsplit(url).scheme == "amqps"


def tls_context(settings: Settings) -> ssl.SSLContext:
    """A client context that verifies the chain (to ``amqp_ca_file``) and the host name."""
    context = ssl.create_default_context(cafile=settings.amqp_ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context  # create_default_context: CERT_REQUIRED and check_hostname


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def ca_certificates_pem(settings: Settings) -> list[bytes]:
    """Each certificate of ``amqp_ca_file`` as PEM (none when it is empty: system CAs)."""
    if not settings.amqp_ca_file:
        return []
    found = _PEM_CERTIFICATE.findall(Path(settings.amqp_ca_file).read_bytes())
    if not found:
        raise ValueError(f"FAIRWAY_AMQP_CA_FILE={settings.amqp_ca_file} holds no PEM certificate")
    return found


def kombu_ssl(url: str, settings: Settings) -> dict[str, Any] | bool:
    """Celery's ``broker_use_ssl`` for ``url``: False for plain AMQP, else verify as pika does.

    ``server_hostname`` turns on py-amqp's host name check (without this dict
    ``amqps://`` would check the chain only). It is the URL's host as written: kombu
    would fill in its own, after rewriting ``localhost`` to ``127.0.0.1``.
    """
    if not uses_tls(url):
        return False
    return {
        "ca_certs": settings.amqp_ca_file or None,
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": urllib.parse.urlsplit(url).hostname,
        "tls_minimum_version": ssl.TLSVersion.TLSv1_2,
    }


def parameters(settings: Settings, name: str) -> pika.URLParameters:
    """Connection parameters from ``settings.amqp_url`` with a client name and heartbeat.

    For ``amqps://`` the TLS options are Fairway's (:func:`tls_context`, SNI and host
    name check on the URL's host), whatever an ``ssl_options`` URL argument said.
    """
    params = pika.URLParameters(settings.amqp_url)
    if uses_tls(settings.amqp_url):
        params.ssl_options = pika.SSLOptions(tls_context(settings), server_hostname=params.host)
    params.client_properties = {"connection_name": name, "product": "fairway"}
    if "heartbeat" not in settings.amqp_url:
        params.heartbeat = 30
    params.connection_attempts = 1
    params.blocked_connection_timeout = 300
    return params


@contextmanager
def blocking_channel(settings: Settings, name: str) -> Iterator[BlockingChannel]:
    """A channel on a short-lived blocking connection named ``name``, closed on exit."""
    connection = pika.BlockingConnection(parameters(settings, name))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def declare_topology(settings: Settings) -> None:
    """Declare the shared topology over a short-lived blocking connection."""
    with blocking_channel(settings, "fairway-declare") as channel:
        topology.declare(channel, settings)
