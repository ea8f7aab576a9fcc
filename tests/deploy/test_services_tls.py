"""``scripts/services.sh tls-certs``: the local node's private CA and server certificate.

The node itself is started with TLS by tests/integration/test_tls.py (with the test's
own CA); here the certificates the script makes are checked without a broker: a TLS
handshake that verifies them as Fairway's clients do, idempotence, and files an
operator put there being kept.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import trustme

from tests.deploy.tools import ROOT, run

SCRIPT = str(ROOT / "scripts" / "services.sh")


def tls_certs(services_dir: Path, tls_dir: Path | None = None) -> str:
    env = {"FAIRWAY_SERVICES_DIR": str(services_dir)}
    if tls_dir is not None:
        env["FAIRWAY_RABBITMQ_TLS_DIR"] = str(tls_dir)
    result = run([SCRIPT, "tls-certs"], timeout=60, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def handshake(tls_dir: Path, server_name: str) -> None:
    """Serve server.pem once on loopback; connect trusting only ca.pem, checking the name."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls_dir / "server.pem", tls_dir / "server-key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            tls.sendall(b"x")
    finally:
        thread.join(5)
        listener.close()


def test_generated_certificates_verify_for_the_loopback_names(tmp_path: Path) -> None:
    out = tls_certs(tmp_path)
    tls_dir = tmp_path / "tls"
    assert "creating a private CA" in out
    for name in ("localhost", "127.0.0.1"):
        handshake(tls_dir, name)
    assert (tls_dir / "server-key.pem").stat().st_mode & 0o077 == 0
    assert (tls_dir / "ca-key.pem").stat().st_mode & 0o077 == 0


def test_more_names_for_a_broker_reached_from_elsewhere(tmp_path: Path) -> None:
    env = {"FAIRWAY_SERVICES_DIR": str(tmp_path), "FAIRWAY_RABBITMQ_TLS_NAMES": "DNS:broker.test"}
    result = run([SCRIPT, "tls-certs"], timeout=60, **env)
    assert result.returncode == 0, result.stderr
    handshake(tmp_path / "tls", "broker.test")
    handshake(tmp_path / "tls", "localhost")


def test_a_second_run_changes_nothing(tmp_path: Path) -> None:
    tls_certs(tmp_path)
    tls_dir = tmp_path / "tls"
    before = {p.name: p.read_bytes() for p in tls_dir.iterdir()}
    out = tls_certs(tmp_path)
    assert "creating" not in out and "issuing" not in out
    assert {p.name: p.read_bytes() for p in tls_dir.iterdir()} == before


def test_an_operators_files_are_kept(tmp_path: Path) -> None:
    tls_dir = tmp_path / "given"
    tls_dir.mkdir()
    ca = trustme.CA()
    server = ca.issue_cert("broker.example.com")
    ca.cert_pem.write_to_path(str(tls_dir / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(tls_dir / "server.pem"))
    server.private_key_pem.write_to_path(str(tls_dir / "server-key.pem"))
    before = {p.name: p.read_bytes() for p in tls_dir.iterdir()}
    tls_certs(tmp_path / "services", tls_dir)
    assert {p.name: p.read_bytes() for p in tls_dir.iterdir()} == before


def test_a_lone_server_certificate_without_its_ca_is_an_error(tmp_path: Path) -> None:
    tls_dir = tmp_path / "given"
    tls_dir.mkdir()
    (tls_dir / "server.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    result = run(
        [SCRIPT, "tls-certs"],
        timeout=60,
        FAIRWAY_SERVICES_DIR=str(tmp_path / "services"),
        FAIRWAY_RABBITMQ_TLS_DIR=str(tls_dir),
    )
    assert result.returncode != 0
    assert "no ca.pem" in result.stderr
