"""Attack helpers shared by ``benchmarks/isolation.py`` and the hostile integration test.

What a hostile party does to a shared resource, with nothing measured here: AMQP logins
as a device (or with a wrong password), HTTP calls from an address of its own, and a
few threads hammering a step while tallying what each call was answered.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import pika

from fairway.amqp.connection import parameters
from fairway.kernel.settings import Settings

# What the broker answers a refused login with (pika's names for RabbitMQ's
# ACCESS_REFUSED at the handshake); any other failure while opening is a lost connection.
LOGIN_REFUSED = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.AuthenticationError,
)


def with_user(amqp_url: str, username: str, password: str) -> str:
    """``amqp_url`` logging in as ``username`` with ``password``."""
    parts = urllib.parse.urlsplit(amqp_url)
    user = urllib.parse.quote(username, safe="") + ":" + urllib.parse.quote(password, safe="")
    return urllib.parse.urlunsplit(
        parts._replace(netloc=f"{user}@{parts.netloc.rpartition('@')[2]}")
    )


def try_login(amqp_url: str, username: str, password: str, name: str = "attacker") -> str:
    """One AMQP login as ``username``: ``"admitted"`` (closed at once), ``"refused"`` (the
    broker's ACCESS_REFUSED) or ``"lost"`` (any other failure while opening)."""
    url = with_user(amqp_url, username, password)
    try:
        connection = pika.BlockingConnection(parameters(Settings(amqp_url=url), name))
    except LOGIN_REFUSED:
        return "refused"
    except pika.exceptions.AMQPError:
        return "lost"
    with suppress(pika.exceptions.AMQPError):
        connection.close()
    return "admitted"


def hammer(
    seconds: float,
    step: Callable[[int, int], str],
    counts: Any,
    threads: int = 4,
    errors: tuple[type[BaseException], ...] = (),
    pause: float = 0.1,
) -> None:
    """Run ``step(thread, n)`` from ``threads`` threads for ``seconds``; tally the outcomes
    it returns (``ok``, a refusal's reason, ...) into ``counts`` (a dict or a managed
    one). An exception in ``errors`` is tallied by its class name, after ``pause``."""
    tallies: list[dict[str, int]] = [{} for _ in range(threads)]

    def loop(slot: int) -> None:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            try:
                outcome = step(slot, n)
            except errors as exc:
                outcome = type(exc).__name__
                time.sleep(pause)
            tallies[slot][outcome] = tallies[slot].get(outcome, 0) + 1
            n += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    counts.update(merge(tallies))


def merge(tallies: Sequence[dict[str, int]]) -> dict[str, int]:
    """The sum of several outcome tallies."""
    total: dict[str, int] = {}
    for tally in tallies:
        for k, v in tally.items():
            total[k] = total.get(k, 0) + v
    return total


def http_session(source: str) -> Any:
    """A ``requests`` session calling from loopback address ``source`` (all of 127/8 is
    local on Linux), as a caller of its own would: per-address throttling sees it apart.
    ``requests`` is a development dependency, imported here only when asked for."""
    import requests
    from requests.adapters import HTTPAdapter

    class SourceAddress(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["source_address"] = (source, 0)
            super().init_poolmanager(*args, **kwargs)

    session = requests.Session()
    session.mount("http://", SourceAddress())
    return session


def outcome(answer: Any, ok: int) -> str:
    """``"ok"`` for status ``ok``, else the answer's ``error`` code (``http_<status>``
    when the body is not the API's ``{error, message}``)."""
    if answer.status_code == ok:
        return "ok"
    with suppress(ValueError, AttributeError, KeyError, TypeError):
        return str(answer.json()["error"])
    return f"http_{answer.status_code}"
