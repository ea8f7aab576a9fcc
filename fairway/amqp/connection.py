"""Connection parameters, broker failover and short-lived blocking connections.

``FAIRWAY_AMQP_URL`` names one broker or the nodes of a cluster (comma-separated).
Every long-lived connection of Fairway keeps a :class:`Brokers`: it connects to its
current address and, when the connection is lost or refused, moves on to the next
(wrapping around), under the shared reconnect backoff (:mod:`fairway.amqp.backoff`).
A connection that works stays where it is: nothing moves back when a node returns.
Short-lived connections (:func:`blocking_channel`) try the addresses in order.

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
from pika.exceptions import AMQPConnectionError

from fairway.amqp import metrics
from fairway.kernel import topology
from fairway.kernel.settings import Settings, split_urls


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


def kombu_url(url: str) -> str:
    """Celery's ``broker_url`` for a Fairway broker list: kombu separates failover URLs
    with ``;`` (and tries them round-robin), Fairway with commas."""
    return ";".join(split_urls(url))


def kombu_ssl(url: str, settings: Settings) -> dict[str, Any] | bool:
    """Celery's ``broker_use_ssl`` for ``url``: False for plain AMQP, else verify as pika does.

    ``server_hostname`` turns on py-amqp's host name check (without this dict
    ``amqps://`` would check the chain only). It is the (first) URL's host as written:
    kombu would fill in its own, after rewriting ``localhost`` to ``127.0.0.1``. kombu
    applies one TLS dict to every failover URL, so with several ``amqps://`` brokers
    each broker's certificate must also name the first one's host (docs/deploy.md).
    """
    first = split_urls(url)[0]
    if not uses_tls(first):
        return False
    return {
        "ca_certs": settings.amqp_ca_file or None,
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": urllib.parse.urlsplit(first).hostname,
        "tls_minimum_version": ssl.TLSVersion.TLSv1_2,
    }


def address(url: str) -> str:
    """``host:port`` of a broker URL (no credentials: for logs and metric labels)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    host = parts.hostname or "localhost"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parameters(settings: Settings, name: str, url: str | None = None) -> pika.URLParameters:
    """Connection parameters for ``url`` (default: the first broker of ``settings.amqp_url``)
    with a client name and heartbeat.

    For ``amqps://`` the TLS options are Fairway's (:func:`tls_context`, SNI and host
    name check on the URL's host), whatever an ``ssl_options`` URL argument said.
    """
    url = url or settings.amqp_urls[0]
    params = pika.URLParameters(url)
    if uses_tls(url):
        params.ssl_options = pika.SSLOptions(tls_context(settings), server_hostname=params.host)
    params.client_properties = {"connection_name": name, "product": "fairway"}
    if "heartbeat" not in url:
        params.heartbeat = 30
    params.connection_attempts = 1
    params.blocked_connection_timeout = 300
    return params


class Brokers:
    """The broker addresses of one named connection, and the one it uses now.

    A long-lived connection calls :meth:`opened` when it is open and :meth:`lost` when
    it is lost or refused (before scheduling its retry): the next attempt goes to the
    next address, and the metrics follow. ``vhost`` replaces the URLs' vhost (the
    monitor's event feed).
    """

    def __init__(self, settings: Settings, name: str, vhost: str | None = None) -> None:
        self.settings, self.name, self.vhost = settings, name, vhost
        self.urls = settings.amqp_urls
        self.index = 0

    @property
    def url(self) -> str:
        """The address to connect to now."""
        return self.urls[self.index]

    @property
    def address(self) -> str:
        """``host:port`` of :attr:`url`."""
        return address(self.url)

    def parameters(self) -> pika.URLParameters:
        """Connection parameters for :attr:`url`."""
        params = parameters(self.settings, self.name, self.url)
        if self.vhost is not None:
            params.virtual_host = self.vhost
        return params

    def in_order(self) -> list[str]:
        """Every address, the current one first: the order a fresh attempt tries them."""
        return self.urls[self.index :] + self.urls[: self.index]

    def use(self, url: str) -> None:
        """Make ``url`` (one of :attr:`urls`) the current address."""
        self.index = self.urls.index(url)

    def failover(self) -> None:
        """Make the next address the current one (counted; nothing with one address)."""
        if len(self.urls) > 1:
            self.index = (self.index + 1) % len(self.urls)
            metrics.FAILOVERS.labels(self.name).inc()

    def opened(self) -> None:
        """The connection to :attr:`url` is open."""
        metrics.CONNECTED.labels(self.name).set(1)
        metrics.CONNECTS.labels(self.name, self.address).inc()

    def lost(self) -> None:
        """The connection is gone or was refused: the next attempt goes to the next address."""
        metrics.CONNECTED.labels(self.name).set(0)
        self.failover()


def open_blocking(brokers: Brokers) -> pika.BlockingConnection:
    """A blocking connection to the first address that answers, from the current one on.

    Raises the last address's error when none answers.
    """
    error: Exception | None = None
    for url in brokers.in_order():
        brokers.use(url)
        try:
            connection = pika.BlockingConnection(brokers.parameters())
        except (AMQPConnectionError, OSError) as exc:
            error = exc
            brokers.failover()
            continue
        return connection
    assert error is not None
    raise error


@contextmanager
def blocking_channel(
    settings: Settings, name: str, url: str | None = None
) -> Iterator[BlockingChannel]:
    """A channel on a short-lived blocking connection named ``name``, closed on exit.

    It goes to ``url`` if given, else to the first broker of ``settings.amqp_url`` that
    answers.
    """
    if url is not None:
        connection = pika.BlockingConnection(parameters(settings, name, url))
    else:
        connection = open_blocking(Brokers(settings, name))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def declare_topology(settings: Settings, url: str | None = None) -> None:
    """Declare the shared topology over a short-lived blocking connection (to ``url``, if
    given: the broker a consumer is about to connect to)."""
    with blocking_channel(settings, "fairway-declare", url) as channel:
        topology.declare(channel, settings)
