"""``amqps://``: every broker client verifies the broker's chain and host name.

The end-to-end check against a real TLS listener is tests/integration/test_tls.py;
these pin down what each client is told, without a broker.
"""

from __future__ import annotations

import ssl
import urllib.parse
from pathlib import Path

import pytest
import trustme

from fairway.amqp.connection import ca_certificates_pem, kombu_ssl, parameters
from fairway.kernel.settings import Settings, SettingsError
from gateway.service import client_tls_options
from tasks.celery_app import make_celery

URL = "amqps://fairway:pw@broker.example.com:5671/fairway"


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


def test_a_missing_ca_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"FAIRWAY_AMQP_CA_FILE.*must be an existing file"):
        Settings.from_env({"FAIRWAY_AMQP_URL": URL, "FAIRWAY_AMQP_CA_FILE": str(tmp_path / "no")})


def test_a_ca_file_without_certificates_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    settings = Settings.from_env({}, amqp_url=URL, amqp_ca_file=str(empty))
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        ca_certificates_pem(settings)


def test_pika_verifies_chain_and_host_name(ca_file: str) -> None:
    params = parameters(Settings.from_env({}, amqp_url=URL, amqp_ca_file=ca_file), "t")
    assert params.port == 5671
    options = params.ssl_options
    assert options is not None
    assert options.server_hostname == "broker.example.com"
    assert options.context.verify_mode == ssl.CERT_REQUIRED
    assert options.context.check_hostname
    assert len(options.context.get_ca_certs()) == 1  # the given CA, not the system's


def test_url_ssl_options_cannot_turn_verification_off(ca_file: str) -> None:
    loose = urllib.parse.quote(repr({"ca_certs": ca_file, "cert_reqs": 0}))
    url = f"{URL}?ssl_options={loose}"
    params = parameters(Settings.from_env({}, amqp_url=url, amqp_ca_file=ca_file), "t")
    assert params.ssl_options is not None
    assert params.ssl_options.context.verify_mode == ssl.CERT_REQUIRED


def test_plain_amqp_has_no_tls(ca_file: str) -> None:
    params = parameters(Settings.from_env({}, amqp_ca_file=ca_file), "t")
    assert params.ssl_options is None
    assert kombu_ssl(Settings().amqp_url, Settings()) is False


def test_celery_verifies_like_pika(ca_file: str) -> None:
    settings = Settings.from_env({}, amqp_url=URL, amqp_ca_file=ca_file)
    conf = make_celery(settings).conf
    assert conf.broker_use_ssl["ca_certs"] == ca_file
    assert conf.broker_use_ssl["cert_reqs"] == ssl.CERT_REQUIRED
    # The URL's host as written (kombu's own would be 127.0.0.1 for localhost).
    assert conf.broker_use_ssl["server_hostname"] == "broker.example.com"
    separate = Settings.from_env(
        {}, amqp_url="amqp://127.0.0.1/", celery_broker_url=URL, amqp_ca_file=ca_file
    )
    assert make_celery(separate).conf.broker_use_ssl["ca_certs"] == ca_file


def test_gateway_trusts_the_given_ca_for_the_url_host(ca_file: str) -> None:
    settings = Settings.from_env({}, amqp_url=URL, amqp_ca_file=ca_file)
    options = client_tls_options(settings, "broker.example.com")
    assert options._hostnameASCII == "broker.example.com"


def test_each_broker_of_a_cluster_is_checked_under_its_own_name(ca_file: str) -> None:
    """pika and the gateway check each node's certificate for the host of its own URL."""
    other = URL.replace("broker.example.com", "broker2.example.com")
    settings = Settings.from_env({}, amqp_url=f"{URL},{other}", amqp_ca_file=ca_file)
    names = [parameters(settings, "t", url).ssl_options.server_hostname for url in (URL, other)]
    assert names == ["broker.example.com", "broker2.example.com"]
    # Celery: one TLS dict for every failover URL, named after the first (docs/deploy.md).
    conf = make_celery(settings).conf
    assert conf.broker_url == f"{URL};{other}"
    assert conf.broker_use_ssl["server_hostname"] == "broker.example.com"
