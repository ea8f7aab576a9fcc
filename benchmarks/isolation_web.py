"""Isolation on the web side: a quiet tenant's pages, jobs and live events while a
hostile party floods the web app, the job queue or the push gateway.

Part of :mod:`benchmarks.isolation` (run with it). The quiet side, measured unloaded and
during each attack, is the quiet tenant's admin (a bearer API token; the same work a
browser's session does per request):

* ``web``: ``GET /`` and ``GET /api/devices`` in turn, 10 a second: latency, non-200s;
* ``job``: a small report (one device, one hour, 600 s buckets) submitted, polled every
  0.1 s until it ends, the next one a second later: submit-to-finished latency (a job
  still unfinished :data:`JOB_GRACE` s after the phase counts with the time it waited,
  and as an error);
* ``event``: one live stream (``/api/push-token`` then the gateway's ``/events``): the
  quiet device's readings' publish-to-event latency (the event's ``ts`` is the latest
  reading of the batch it stands for).

Attacks (each from its own process, four threads, as a script would):

* ``job_flood``: a hostile viewer submits reports over a day of its tenant's readings,
  retrying 0.1 s after each refusal (``job_quota``, 429) so its quota stays full;
* ``web_login_flood``: a stranger posts wrong passwords for ever new user names to
  ``/api/login`` (``bad_credentials``; ``login_rate`` beyond its address's bucket;
  ``too_many_attempts`` once its address has used its free attempts; ``login_busy``
  when no password-check slot is free);
* ``session_flood``: a hostile viewer logs in with its *correct* password as fast as it
  can, each login a new session (refused ``login_rate`` beyond the user's bucket of
  successful logins, ``too_many_attempts`` or ``login_busy``);
* ``push_token_flood``: a hostile viewer mints push tokens (``push_token_rate``) and
  opens a gateway stream with each (``user_session_limit``), keeping them open.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from typing import Any

import orjson
import requests

from benchmarks.common import percentile, r
from fairway.devtools import attacks

QUIET_USER, HOSTILE_USER = "quiet-admin", "hostile-viewer"
PASSWORD = "correct horse battery staple"
THREADS = 4
RETRY_PAUSE = 0.1  # the attacker's pause after a refusal (job and push-token floods)
JOB_GRACE = 30.0  # how long the quiet admin's last job may finish after the phase

# job_flood last: the jobs it leaves queued would load the phases after it.
WEB_ATTACKS = ("web_login_flood", "session_flood", "push_token_flood", "job_flood")


# Each attacker calls from its own loopback address (all of 127/8 is local on Linux), as
# a stranger would from its own: per-address throttling then sees it apart from the
# quiet admin (127.0.0.1) and from the attacks before it.
SOURCE = {
    "job_flood": "127.0.0.2",
    "web_login_flood": "127.0.0.3",
    "session_flood": "127.0.0.4",
    "push_token_flood": "127.0.0.5",
}


def _session(attack: str) -> requests.Session:
    """An HTTP session calling from ``attack``'s own address."""
    session: requests.Session = attacks.http_session(SOURCE[attack])
    return session


def _ms(values: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50_ms": r(percentile(ms, 50)), "p99_ms": r(percentile(ms, 99))}


# -- the quiet side ----------------------------------------------------------------------
class QuietWeb:
    """The quiet admin's requests, jobs and live events for one phase (three threads)."""

    def __init__(self, web_url: str, token: str, report: dict[str, Any], device: str) -> None:
        self.web_url = web_url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.report = report
        self.device = device

    def run(self, seconds: float) -> dict[str, Any]:
        """Measure for ``seconds``; figures and error kinds per quiet activity."""
        stop = threading.Event()
        out: dict[str, Any] = {}
        threads = [
            threading.Thread(target=lambda f=f, k=k: out.update({k: f(stop)}), daemon=True)
            for k, f in (("web", self._pages), ("job", self._jobs), ("event", self._events))
        ]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(120)
        return out

    def _pages(self, stop: threading.Event) -> dict[str, Any]:
        session = requests.Session()
        latencies: list[float] = []
        errors: list[str] = []
        paths = ("/", "/api/devices")
        n = 0
        next_at = time.monotonic()
        while not stop.is_set():
            began = time.perf_counter()
            try:
                answer = session.get(self.web_url + paths[n % 2], headers=self.headers, timeout=30)
                if answer.status_code != 200:
                    errors.append(f"http_{answer.status_code}")
                else:
                    latencies.append(time.perf_counter() - began)
            except requests.RequestException as exc:
                errors.append(type(exc).__name__)
            n += 1
            next_at += 0.1
            time.sleep(max(0.0, next_at - time.monotonic()))
        return {**_ms(latencies), "errors": len(errors), "error_kinds": sorted(set(errors))}

    def _jobs(self, stop: threading.Event) -> dict[str, Any]:
        session = requests.Session()
        latencies: list[float] = []
        errors: list[str] = []
        while not stop.is_set():
            began = time.perf_counter()
            try:
                answer = session.post(
                    self.web_url + "/api/reports",
                    json=self.report,
                    headers=self.headers,
                    timeout=30,
                )
                if answer.status_code != 202:
                    errors.append(f"submit_{answer.status_code}_{answer.json().get('error')}")
                    time.sleep(1)
                    continue
                url = self.web_url + answer.json()["url"]
                state = ""
                while state not in ("SUCCESS", "FAILURE") and not stop.wait(0.1):
                    state = session.get(url, headers=self.headers, timeout=30).json()["state"]
                give_up = time.perf_counter() + JOB_GRACE
                while state not in ("SUCCESS", "FAILURE") and time.perf_counter() < give_up:
                    time.sleep(0.1)
                    state = session.get(url, headers=self.headers, timeout=30).json()["state"]
                # A job still waiting counts with the time it waited so far (at least).
                latencies.append(time.perf_counter() - began)
                if state != "SUCCESS":
                    errors.append(f"job_{state or 'unknown'}")
            except (requests.RequestException, ValueError, KeyError) as exc:
                errors.append(type(exc).__name__)
            stop.wait(1.0)
        return {**_ms(latencies), "errors": len(errors), "error_kinds": sorted(set(errors))}

    def _events(self, stop: threading.Event) -> dict[str, Any]:
        latencies: list[float] = []
        errors: list[str] = []
        try:
            minted = requests.get(
                self.web_url + "/api/push-token", headers=self.headers, timeout=30
            )
            if minted.status_code != 200:
                return {**_ms([]), "errors": 1, "error_kinds": [f"push_token_{minted.status_code}"]}
            body = minted.json()
            stream = requests.get(
                body["url"] + "/events", params={"token": body["token"]}, stream=True, timeout=30
            )
            if stream.status_code != 200:
                return {**_ms([]), "errors": 1, "error_kinds": [f"events_{stream.status_code}"]}

            def close_at_stop() -> None:  # unblocks iter_lines between events
                stop.wait()
                stream.close()

            threading.Thread(target=close_at_stop, daemon=True).start()
            kind = ""
            with suppress(requests.RequestException, AttributeError, ValueError):
                for line in stream.iter_lines():
                    if line.startswith(b"event:"):
                        kind = line[6:].strip().decode()
                    elif line.startswith(b"data:") and kind == "telemetry":
                        event = orjson.loads(line[5:])
                        if event.get("device") == self.device:
                            sent = datetime.fromisoformat(event["ts"]).timestamp()
                            latencies.append(time.time() - sent)
                    if stop.is_set():
                        break
        except requests.RequestException as exc:
            errors.append(type(exc).__name__)
        if not latencies:
            errors.append("no_events")
        return {**_ms(latencies), "errors": len(errors), "error_kinds": sorted(set(errors))}


# -- the attackers (each runs in a child process) ----------------------------------------
def _hammer(seconds: float, step: Callable[[int, int], str], counts: Any) -> None:
    """Run ``step(thread, n)`` from :data:`THREADS` threads for ``seconds``; tally the
    outcomes it returns (``ok``, a refusal's reason, or an error) into ``counts``."""
    attacks.hammer(
        seconds, step, counts, THREADS, errors=(requests.RequestException,), pause=RETRY_PAUSE
    )


_outcome = attacks.outcome


def job_attacker(
    web_url: str, token: str, report: dict[str, Any], seconds: float, counts: Any
) -> None:
    """Submit reports as fast as the quota lets, retrying 0.1 s after a refusal."""
    sessions = [_session("job_flood") for _ in range(THREADS)]
    headers = {"Authorization": f"Bearer {token}"}

    def step(slot: int, n: int) -> str:
        answer = sessions[slot].post(
            web_url + "/api/reports", json=report, headers=headers, timeout=30
        )
        outcome = _outcome(answer, 202)
        if outcome != "ok":
            time.sleep(RETRY_PAUSE)
        return outcome

    _hammer(seconds, step, counts)


def web_login_attacker(web_url: str, seconds: float, counts: Any) -> None:
    """Wrong passwords for ever new user names, as fast as the answers come."""
    sessions = [_session("web_login_flood") for _ in range(THREADS)]

    def step(slot: int, n: int) -> str:
        body = {"user": f"nobody-{slot}-{n}", "password": f"wrong-password-{n}"}
        return _outcome(sessions[slot].post(web_url + "/api/login", json=body, timeout=60), 200)

    _hammer(seconds, step, counts)


def session_attacker(web_url: str, seconds: float, counts: Any) -> None:
    """The hostile viewer's correct password, a new session per login, as fast as it can."""

    def step(slot: int, n: int) -> str:
        body = {"user": HOSTILE_USER, "password": PASSWORD}
        with _session("session_flood") as session:  # a new session (cookie jar) each time
            return _outcome(session.post(web_url + "/api/login", json=body, timeout=60), 200)

    _hammer(seconds, step, counts)


def push_token_attacker(web_url: str, token: str, seconds: float, counts: Any) -> None:
    """Mint push tokens as fast as allowed; open a stream with each and keep it open."""
    headers = {"Authorization": f"Bearer {token}"}
    sessions = [_session("push_token_flood") for _ in range(THREADS)]
    streams: list[requests.Response] = []

    def step(slot: int, n: int) -> str:
        minted = sessions[slot].get(web_url + "/api/push-token", headers=headers, timeout=30)
        outcome = _outcome(minted, 200)
        if outcome != "ok":
            time.sleep(RETRY_PAUSE)
            return outcome
        body = minted.json()
        stream = _session("push_token_flood").get(
            body["url"] + "/events", params={"token": body["token"]}, stream=True, timeout=30
        )
        if stream.status_code == 200:
            streams.append(stream)
            return "stream_open"
        return "gateway_" + _outcome(stream, 200)

    _hammer(seconds, step, counts)
    for stream in streams:
        stream.close()


# -- one attack ------------------------------------------------------------------------------
REFUSALS: dict[str, tuple[tuple[str, str], ...]] = {
    # attack: the (process, reason) pairs its refusals are counted under
    "job_flood": (("web", "job_quota"),),
    "web_login_flood": (
        ("web", "login_rate"),
        ("web", "too_many_attempts"),
        ("web", "login_busy"),
        ("web", "bad_credentials"),
    ),
    "session_flood": (
        ("web", "login_rate"),
        ("web", "too_many_attempts"),
        ("web", "login_busy"),
    ),
    "push_token_flood": (("web", "push_token_rate"), ("gateway", "user_session_limit")),
}
METRIC = {"web": "fairway_web_refused_total", "gateway": "fairway_gateway_refused_total"}
# What the attacker sees for each (process, reason): gateway refusals are prefixed.
SEEN = {"web": "", "gateway": "gateway_"}


def refusals(procs: dict[str, Any], attack: str) -> dict[str, float]:
    """The server-side refusal counts of ``attack``'s reasons (all tenants)."""
    out: dict[str, float] = {}
    for proc, reason in REFUSALS[attack]:
        name = METRIC[proc]
        samples = procs[proc].metrics(name).get(name, {})
        out[SEEN[proc] + reason] = sum(
            v for labels, v in samples.items() if f'reason="{reason}"' in labels
        )
    return out


def attacker_target(
    attack: str, web_url: str, hostile_token: str, report: dict[str, Any], seconds: float
) -> tuple[Callable[..., None], tuple[Any, ...]]:
    """The child process's function and arguments for ``attack`` (``counts`` appended)."""
    if attack == "job_flood":
        return job_attacker, (web_url, hostile_token, report, seconds)
    if attack == "web_login_flood":
        return web_login_attacker, (web_url, seconds)
    if attack == "session_flood":
        return session_attacker, (web_url, seconds)
    if attack == "push_token_flood":
        return push_token_attacker, (web_url, hostile_token, seconds)
    raise ValueError(attack)
