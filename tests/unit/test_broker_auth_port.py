"""RabbitMQ's device logins go to the web app's own broker-auth port by default, and every
place that configures a broker names that port (issue 10: a login flood and UI load must
not share one thread pool)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fairway.kernel.settings import Settings, SettingsError
from web.server import BROKER_AUTH_ON_WEB_PORT, warn_broker_auth_on_web_port

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = Settings().broker_auth_port


def test_the_default_is_a_port_of_its_own() -> None:
    s = Settings()
    assert DEFAULT == 8082
    assert DEFAULT not in {s.web_port, s.gateway_port, 9100}  # 9100: compose's metrics port


def test_every_broker_configuration_names_the_default_port() -> None:
    services = (ROOT / "scripts/services.sh").read_text()
    assert f'WEB_AUTH_PORT="${{FAIRWAY_BROKER_AUTH_PORT:-{DEFAULT}}}"' in services
    assert "auth_http.user_path = $WEB_AUTH_URL/user" in services
    compose = (ROOT / "deploy/rabbitmq/rabbitmq.conf").read_text()
    paths = re.findall(r"^auth_http\.\w+_path = (.+)$", compose, re.M)
    assert len(paths) == 4 and all(p.startswith(f"http://web:{DEFAULT}/broker/") for p in paths)
    # Ansible derives its ports from fairway_settings (rendered and checked against the
    # app's settings in tests/deploy/test_broker_auth_ports.py): the same default here.
    role = _yaml("ansible/roles/rabbitmq/defaults/main.yml")
    app_port = "rabbitmq_auth_http_app_port"
    assert role["rabbitmq_auth_http_url"] == f"http://127.0.0.1:{{{{ {app_port} }}}}/broker"
    assert f"broker_auth_port | default({DEFAULT})" in role[app_port]
    single = _yaml("ansible/inventories/single/group_vars/all/vars.yml")
    assert single["rabbitmq_auth_http_url"] == role["rabbitmq_auth_http_url"]
    # The cluster's brokers ask the proxy (8443), which forwards to the apps' auth port.
    nginx = _yaml("ansible/roles/nginx/defaults/main.yml")["nginx_app_broker_auth_port"]
    assert f"broker_auth_port | default({DEFAULT})" in nginx
    template = (ROOT / "ansible/roles/nginx/templates/fairway.conf.j2").read_text()
    broker_server = template.split("listen {{ nginx_broker_auth_port }} ssl;", 1)[1]
    assert "proxy_pass http://fairway_broker_auth;" in broker_server
    assert "server {{ app_address(host) }}:{{ nginx_app_broker_auth_port }};" in template


def test_0_turns_it_off_and_the_web_port_cannot_be_it() -> None:
    assert Settings(broker_auth_port=0).broker_auth_port == 0
    with pytest.raises(SettingsError, match="FAIRWAY_BROKER_AUTH_PORT=8080 is FAIRWAY_WEB_PORT"):
        Settings(broker_auth_port=8080)
    with pytest.raises(SettingsError, match="FAIRWAY_BROKER_AUTH_PORT"):
        Settings.from_env({"FAIRWAY_WEB_PORT": str(DEFAULT)})


def test_the_web_port_still_serves_broker_paths_and_counts_them() -> None:
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"app"]

    wrapped = warn_broker_auth_on_web_port(app, DEFAULT)
    before = BROKER_AUTH_ON_WEB_PORT._value.get()
    for path in ("/broker/user", "/api/login", "/broker/vhost"):
        assert wrapped({"PATH_INFO": path}, lambda s, h: None) == [b"app"]
    assert seen == ["/broker/user", "/api/login", "/broker/vhost"]
    assert BROKER_AUTH_ON_WEB_PORT._value.get() - before == 2


def _yaml(path: str) -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / path).read_text())
    assert isinstance(loaded, dict)
    return loaded
