"""The device registry and users pages in a real browser (headless Chromium, Selenium),
against every process: a device registered in the UI gets its credentials once, the
snippets the page shows publish over AMQP and MQTT as they are, and the device shows
online; disable, enable and rotate from the UI; a quarantine shown and lifted; users and
roles; a viewer sees no management control.

Device logins are decided by the web app, which the broker asks over HTTP on its
broker-auth port. The shared broker asks port 8082 (the web app's on port 8080), which
other test runs share; the registration test starts a
RabbitMQ node of its own (``scripts/services.sh start-rabbitmq`` in its own directory,
with its own name and ports) that asks this test's web app, so it needs neither port 8080
nor its lock."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from fairway.devtools.processes import free_port
from fairway.kernel.settings import Settings
from fairway.storage import accounts, quarantine, registry
from tests.harness import LocalNode, Pipeline
from tests.integration import test_browser as shared
from tests.integration.conftest import pipeline_on_own_broker
from tests.integration.test_browser import ARTIFACTS, PASSWORD, _log_in, _rows

browser = shared.browser  # headless Chromium, the fixture of the other browser tests


@pytest.fixture
def own_broker(base_settings: Settings, tmp_path: Path) -> Iterator[tuple[Pipeline, LocalNode]]:
    """A pipeline on a RabbitMQ node of this test's own, whose HTTP auth backend is this
    pipeline's web app (a free port): devices log in through it alone."""
    with pipeline_on_own_broker(base_settings, tmp_path) as made:
        yield made


def _run_snippet(code: str) -> None:
    """Run a snippet as pasted, in a fresh interpreter (pika and paho-mqtt are installed)."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n--- snippet:\n{code}"


def _broker_says(auth_port: int, device: str, password: str) -> str:
    """What the web app answers the broker for a device login (allow/deny), on its
    broker-auth port."""
    form = urllib.parse.urlencode({"username": device, "password": password}).encode()
    url = f"http://127.0.0.1:{auth_port}/broker/user"
    with urllib.request.urlopen(url, data=form, timeout=10) as answer:
        return answer.read().decode()


def _credentials(chrome: webdriver.Chrome) -> dict[str, str]:
    """The credentials panel: its fields and snippets (read at once)."""
    return dict(
        chrome.execute_script(
            "const out = {};"
            "document.querySelectorAll('#credentials-details code')"
            "  .forEach((c) => { out[c.dataset.field] = c.textContent; });"
            "for (const id of ['snippet-amqp', 'snippet-mqtt', 'snippet-mosquitto'])"
            "  out[id] = document.getElementById(id).textContent;"
            "out.title = document.getElementById('credentials-title').textContent;"
            "return out;"
        )
    )


def _panel_shown(chrome: webdriver.Chrome) -> bool:
    return chrome.find_element(By.ID, "credentials").is_displayed()


def _role_chosen(chrome: webdriver.Chrome, row: str) -> str:
    return str(chrome.execute_script(f"return document.querySelector('#{row} select').value;"))


def _click(chrome: webdriver.Chrome, row: str, action: str) -> None:
    chrome.find_element(By.CSS_SELECTOR, f"#{row} button[data-action={action}]").click()


def test_register_a_device_in_the_ui_then_it_publishes_with_the_snippets(
    own_broker: tuple[Pipeline, LocalNode], browser: webdriver.Chrome
) -> None:
    pipeline, node = own_broker
    pipeline.tenant("acme")
    accounts.create_user(pipeline.db, "ada", PASSWORD, accounts.ADMIN, "acme")
    for role in ("relay", "scheduler", "monitor", "gateway", "web"):
        pipeline.start(role)
    web = f"http://127.0.0.1:{pipeline.settings.web_port}"
    wait = WebDriverWait(browser, 30, poll_frequency=0.05)

    browser.get(f"{web}/registry")
    _log_in(browser, "ada", PASSWORD)
    wait.until(lambda b: b.current_url.endswith("/registry"))
    wait.until(lambda b: "0 of 0 devices" in b.find_element(By.ID, "registry-note").text)
    assert not _panel_shown(browser)
    browser.find_element(By.ID, "register-device").send_keys("probe-1")
    browser.find_element(By.CSS_SELECTOR, "#register button[type=submit]").click()
    wait.until(_panel_shown)
    shown = _credentials(browser)
    password = shown["Password"]
    assert shown["title"] == "Credentials of probe-1"
    assert shown["Tenant"] == "acme" and shown["User name (AMQP)"] == "probe-1"
    assert len(password) >= 24
    vhost = urllib.parse.quote(pipeline.name, safe="")
    assert shown["AMQP URL"] == f"amqp://probe-1:{password}@127.0.0.1:{node.base}/{vhost}"
    assert shown["MQTT broker"] == f"mqtt://127.0.0.1:{node.base + 2}"
    assert shown["MQTT user name"] == f"{pipeline.name}:probe-1"
    assert password in shown["snippet-mosquitto"]
    wait.until(lambda b: "probe-1" in _rows(b, "#registry tbody tr").get("reg-probe-1", [""])[0])
    assert _rows(browser, "#registry tbody tr")["reg-probe-1"][1:3] == ["acme", "enabled"]
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "registry-credentials.png"))

    # The snippets, as pasted, publish one reading each: over AMQP, then over MQTT.
    _run_snippet(shown["snippet-amqp"])
    pipeline.wait_stored(1, device="probe-1")
    _run_snippet(shown["snippet-mqtt"])
    pipeline.wait_stored(2, device="probe-1")

    # Shown once: hidden on request and gone from the page; never again after a reload.
    browser.find_element(By.ID, "credentials-done").click()
    wait.until(lambda b: not _panel_shown(b))
    assert password not in browser.page_source
    browser.get(f"{web}/registry")
    wait.until(lambda b: "reg-probe-1" in _rows(b, "#registry tbody tr"))
    assert password not in browser.page_source and not _panel_shown(browser)

    # The device shows online on the dashboard (its readings, and the monitor's view of
    # its connections).
    browser.get(f"{web}/")
    wait.until(lambda b: _rows(b, "#devices tbody tr").get("device-probe-1", ["", "", ""])[2])
    assert _rows(browser, "#devices tbody tr")["device-probe-1"][2] == "online"
    browser.save_screenshot(str(ARTIFACTS / "registry-device-online.png"))

    # Disable, then enable, from the registry page, reached from the device's page.
    port = pipeline.settings.broker_auth_port
    browser.get(f"{web}/devices/probe-1")
    wait.until(lambda b: b.find_elements(By.ID, "manage-link")).pop().click()
    wait.until(lambda b: b.current_url.endswith("/registry?device=probe-1"))
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#reg-probe-1 [data-action=disable]"))
    _click(browser, "reg-probe-1", "disable")
    wait.until(lambda b: _rows(b, "#registry tbody tr")["reg-probe-1"][2] == "disabled")
    assert "probe-1: disabled" in browser.find_element(By.ID, "registry-note").text
    assert registry.device_document(pipeline.db, "probe-1")["enabled"] is False
    assert _broker_says(port, "probe-1", password) == "deny"
    browser.save_screenshot(str(ARTIFACTS / "registry-disabled.png"))
    _click(browser, "reg-probe-1", "enable")
    wait.until(lambda b: _rows(b, "#registry tbody tr")["reg-probe-1"][2] == "enabled")
    assert registry.device_document(pipeline.db, "probe-1")["enabled"] is True
    assert _broker_says(port, "probe-1", password) == "allow"

    # Rotate: the first click only asks for confirmation; the second gives a new password,
    # shown once, with which the device publishes; the old one is refused.
    _click(browser, "reg-probe-1", "rotate")
    time.sleep(0.5)
    assert not _panel_shown(browser)
    assert _broker_says(port, "probe-1", password) == "allow"
    _click(browser, "reg-probe-1", "rotate")
    wait.until(_panel_shown)
    rotated = _credentials(browser)
    assert rotated["title"] == "New credentials of probe-1"
    assert rotated["Password"] != password and len(rotated["Password"]) >= 24
    assert _broker_says(port, "probe-1", password) == "deny"
    assert _broker_says(port, "probe-1", rotated["Password"]) == "allow"
    browser.save_screenshot(str(ARTIFACTS / "registry-rotated.png"))
    _run_snippet(rotated["snippet-amqp"])
    pipeline.wait_stored(3, device="probe-1")


def test_users_and_roles_in_the_ui_and_a_viewer_sees_no_control(
    pipeline: Pipeline, browser: webdriver.Chrome
) -> None:
    pipeline.settings = dataclasses.replace(
        pipeline.settings, web_port=free_port(), gateway_port=free_port()
    )
    pipeline.tenant("acme")
    pipeline.device("acme", "boiler-1")
    accounts.create_user(pipeline.db, "ada", PASSWORD, accounts.ADMIN, "acme")
    pipeline.start("web")
    web = f"http://127.0.0.1:{pipeline.settings.web_port}"
    wait = WebDriverWait(browser, 30, poll_frequency=0.05)

    browser.get(f"{web}/users")
    _log_in(browser, "ada", PASSWORD)
    wait.until(lambda b: "user-ada" in _rows(b, "#users tbody tr"))
    assert _rows(browser, "#users tbody tr")["user-ada"][0] == "ada (you)"
    assert not browser.find_elements(By.CSS_SELECTOR, "#user-ada select, #user-ada button")
    roles = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#new-user-role option")]
    assert roles == ["viewer", "admin"]  # admins cannot make operators
    browser.find_element(By.ID, "new-user-id").send_keys("vic")
    browser.find_element(By.ID, "new-user-password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#new-user button[type=submit]").click()
    wait.until(lambda b: "user-vic" in _rows(b, "#users tbody tr"))
    row = _rows(browser, "#users tbody tr")["user-vic"]
    assert (row[1], row[3]) == ("acme", "enabled")
    assert _role_chosen(browser, "user-vic") == "viewer"
    # A role change applies through the API at once; back to viewer for what follows.
    select = browser.find_element(By.CSS_SELECTOR, "#user-vic select")
    select.find_element(By.CSS_SELECTOR, "option[value=admin]").click()
    wait.until(lambda b: b.find_element(By.ID, "users-note").text == "vic: now admin")
    assert (accounts.user_document(pipeline.db, "vic") or {})["role"] == "admin"
    select = browser.find_element(By.CSS_SELECTOR, "#user-vic select")
    select.find_element(By.CSS_SELECTOR, "option[value=viewer]").click()
    wait.until(lambda b: b.find_element(By.ID, "users-note").text == "vic: now viewer")
    assert (accounts.user_document(pipeline.db, "vic") or {})["role"] == "viewer"
    browser.find_element(By.CSS_SELECTOR, "#user-vic button[data-action=disable]").click()
    wait.until(lambda b: _rows(b, "#users tbody tr")["user-vic"][3] == "disabled")
    assert (accounts.user_document(pipeline.db, "vic") or {})["enabled"] is False
    browser.find_element(By.CSS_SELECTOR, "#user-vic button[data-action=enable]").click()
    wait.until(lambda b: _rows(b, "#users tbody tr")["user-vic"][3] == "enabled")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "users.png"))
    # A bad request shows the API's message.
    browser.find_element(By.ID, "new-user-id").send_keys("vic")
    browser.find_element(By.ID, "new-user-password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#new-user button[type=submit]").click()
    error = wait.until(lambda b: b.find_element(By.ID, "user-error").text)
    assert "exists" in error

    # The viewer: no management link, page or control anywhere.
    browser.find_element(By.CSS_SELECTOR, "form.inline button[type=submit]").click()  # log out
    wait.until(lambda b: "/login" in b.current_url)
    _log_in(browser, "vic", PASSWORD)
    wait.until(lambda b: "device-boiler-1" in _rows(b, "#devices tbody tr"))
    nav = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "header nav a")]
    assert "Registry" not in nav and "Users" not in nav and "Devices" in nav
    for path in ("/registry", "/users"):
        browser.get(f"{web}{path}")
        assert "Only admins and operators manage" in browser.find_element(By.ID, "forbidden").text
        assert not browser.find_elements(By.CSS_SELECTOR, "main form, main button")
    browser.save_screenshot(str(ARTIFACTS / "registry-viewer.png"))
    browser.get(f"{web}/devices/boiler-1")
    wait.until(lambda b: b.find_element(By.ID, "state").text in ("online", "offline"))
    assert not browser.find_elements(By.ID, "manage-link")
    buttons = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "main button")]
    assert not [b for b in buttons if b.split()[:1] in (["Disable"], ["Enable"], ["Rotate"])]


def test_a_quarantined_device_shows_until_when_and_an_admin_lifts_it_in_the_ui(
    pipeline: Pipeline, browser: webdriver.Chrome
) -> None:
    pipeline.settings = dataclasses.replace(
        pipeline.settings,
        web_port=free_port(),
        broker_auth_port=free_port(),
        gateway_port=free_port(),
    )
    pipeline.tenant("acme")
    creds = pipeline.device("acme", "flood-1")
    pipeline.device("acme", "calm-1")
    accounts.create_user(pipeline.db, "ada", PASSWORD, accounts.ADMIN, "acme")
    # As a relay imposes it (ingest.quarantine): a first offence, long over, then a
    # second one now (600 s).
    now = time.time()
    first = quarantine.impose(pipeline.db, "flood-1", "acme", now - 4000, 300, 86_400, "x")
    assert first is not None and not first.holds(now)
    held = quarantine.impose(pipeline.db, "flood-1", "acme", now, 300, 86_400, quarantine.REASON)
    assert held is not None and held.offences == 2
    pipeline.start("web")
    port = pipeline.settings.web_port
    auth_port = pipeline.settings.broker_auth_port
    assert _broker_says(auth_port, "flood-1", creds["password"]) == "deny"
    web = f"http://127.0.0.1:{port}"
    wait = WebDriverWait(browser, 30, poll_frequency=0.05)

    browser.get(f"{web}/registry")
    _log_in(browser, "ada", PASSWORD)
    wait.until(lambda b: "reg-flood-1" in _rows(b, "#registry tbody tr"))
    rows = _rows(browser, "#registry tbody tr")
    until = datetime.fromtimestamp(held.until, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert rows["reg-flood-1"][4].startswith(f"until {until}")
    assert rows["reg-flood-1"][4].endswith("(2 offences; device_quarantined)")
    assert rows["reg-calm-1"][4] == ""
    assert not browser.find_elements(By.CSS_SELECTOR, "#reg-calm-1 [data-action=lift-quarantine]")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "registry-quarantined.png"))

    _click(browser, "reg-flood-1", "lift-quarantine")
    wait.until(lambda b: _rows(b, "#registry tbody tr")["reg-flood-1"][4].startswith("none"))
    assert "flood-1: quarantine lifted" in browser.find_element(By.ID, "registry-note").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#reg-flood-1 [data-action=lift-quarantine]")
    record = quarantine.get(pipeline.db, "flood-1")
    assert record is not None and not record.holds(time.time()) and record.offences == 2
    assert pipeline.db[quarantine.COLLECTION].find_one({"_id": "flood-1"})["lifted"] == "ada"
    assert _broker_says(auth_port, "flood-1", creds["password"]) == "allow"
