"""A small client of RabbitMQ's management HTTP API (vhosts and their permissions).

``base_url`` may name several nodes of a cluster, comma-separated (as
``FAIRWAY_RABBITMQ_MGMT_URL`` does): every node answers for the whole cluster, so a
call goes to the first that answers. An HTTP error is an answer and is not retried
elsewhere; a node that cannot be reached is.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from fairway.kernel.ids import is_reserved_id

DEFAULT_URL = "http://guest:guest@127.0.0.1:15672"
TIMEOUT_S = 30.0


def call(base_url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """``METHOD /api/<path>`` with the credentials in ``base_url``; the decoded JSON answer."""
    return call_with_headers(base_url, method, path, {}, body)


def call_with_headers(
    base_url: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: dict[str, Any] | None = None,
) -> Any:
    """:func:`call` with extra request headers (e.g. ``X-Reason`` on a connection close)."""
    bases = [b.strip() for b in base_url.split(",")]
    for base in bases[:-1]:
        try:
            return _call_one(base, method, path, headers, body)
        except urllib.error.HTTPError:
            raise
        except OSError:  # unreachable (URLError, timeout, refused): the next node
            continue
    return _call_one(bases[-1], method, path, headers, body)


def _call_one(
    base_url: str, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
) -> Any:
    parts = urllib.parse.urlsplit(base_url)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{parts.scheme}://{parts.hostname}:{parts.port}/api/{path}", method=method, data=data
    )
    request.add_header("content-type", "application/json")
    for name, value in headers.items():
        request.add_header(name, value)
    user, password = (urllib.parse.unquote(x or "") for x in (parts.username, parts.password))
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("authorization", "Basic " + token)
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def create_vhost(base_url: str, vhost: str, user: str = "guest") -> None:
    """Create ``vhost`` and give ``user`` full rights on it (idempotent)."""
    quoted = urllib.parse.quote(vhost, safe="")
    call(base_url, "PUT", f"vhosts/{quoted}")
    call(
        base_url,
        "PUT",
        f"permissions/{quoted}/{urllib.parse.quote(user, safe='')}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )


def delete_vhost(base_url: str, vhost: str) -> None:
    """Delete ``vhost`` and everything in it."""
    call(base_url, "DELETE", f"vhosts/{urllib.parse.quote(vhost, safe='')}")


def connections_of(base_url: str, vhost: str, user: str) -> list[str]:
    """Names of the connections ``user`` has open on ``vhost`` (connection tracking: a
    connection shows at once)."""
    path = f"connections/username/{urllib.parse.quote(user, safe='')}"
    return [
        conn["name"]
        for conn in call(base_url, "GET", path) or []
        if conn.get("vhost") == vhost and conn.get("user") in (user, f"{vhost}:{user}")
    ]


def connected_users(base_url: str, vhost: str) -> tuple[set[str], int]:
    """The user names with a connection open on ``vhost``, and how many connections the
    cluster has in all (what the call cost the broker grows with).

    One call for every user: ``GET /api/connections?disable_stats=true`` lists the
    broker's connection tracking (a connection shows at once), across every vhost of the
    cluster, so its cost grows with the whole fleet (``benchmarks.quarantine_calls``).
    """
    rows = call(base_url, "GET", "connections?disable_stats=true&columns=user,vhost") or []
    return {str(r.get("user")) for r in rows if r.get("vhost") == vhost}, len(rows)


def close_connections(
    base_url: str, vhost: str, user: str, reason: str, wait_s: float = 8.0
) -> int:
    """Close every connection ``user`` has open on ``vhost``; return how many.

    The registry listing (``disable_stats``) shows a connection at once, but closing
    goes through the statistics database, which learns of a connection only at its
    next emission (every 5 s): a connection younger than that answers 404 and is
    retried for up to ``wait_s``.

    Raises ValueError for a reserved user name: Fairway's own service accounts share
    the vhost, and closing theirs would stop every process.
    """
    if is_reserved_id(user):
        raise ValueError(f"refusing to close the connections of reserved user {user!r}")
    names = connections_of(base_url, vhost, user)
    deadline = time.monotonic() + wait_s
    closed = 0
    for name in names:
        path = f"connections/{urllib.parse.quote(name, safe='')}"
        while True:
            try:
                call_with_headers(base_url, "DELETE", path, {"X-Reason": reason})
                closed += 1
                break
            except urllib.error.HTTPError as exc:
                if exc.code != 404 or time.monotonic() > deadline:
                    break  # gone already, or never seen by the statistics database
                time.sleep(0.5)
    return closed


def close_user_connections(base_url: str, user: str, reason: str) -> None:
    """Close every connection of broker user ``user`` at once, on every vhost.

    ``DELETE /api/connections/username/<user>`` goes through the broker's connection
    tracking, not the statistics database, so even a connection opened a moment ago is
    closed (:func:`close_connections` waits up to 5 s for those). It is not limited to a
    vhost: use it only for names that exist on one (devices: the auth backend admits
    them to Fairway's vhost only). Raises ValueError for a reserved user name.
    """
    if is_reserved_id(user):
        raise ValueError(f"refusing to close the connections of reserved user {user!r}")
    path = f"connections/username/{urllib.parse.quote(user, safe='')}"
    call_with_headers(base_url, "DELETE", path, {"X-Reason": reason})


QUEUE_PAGE_SIZE = 500  # the management API's largest page
MAX_QUEUE_PAGES = 10


def queue_rates(
    base_url: str, vhost: str, name_regex: str, age_s: int = 60, incr_s: int = 5
) -> list[dict[str, Any]]:
    """The vhost's queues whose name matches ``name_regex``: depth, and the publish and
    ack counters with their samples over the last ``age_s`` seconds (every ``incr_s``).

    One request per 500 queues (at most 10): bounded whatever the traffic, and only the
    columns asked for.
    """
    columns = (
        "name,messages,message_stats.publish_details.avg_rate,"
        "message_stats.publish_details.samples,message_stats.ack_details.avg_rate,"
        "message_stats.ack_details.samples"
    )
    query = urllib.parse.urlencode(
        {
            "name": name_regex,
            "use_regex": "true",
            "columns": columns,
            "msg_rates_age": age_s,
            "msg_rates_incr": incr_s,
            "page_size": QUEUE_PAGE_SIZE,
        }
    )
    items: list[dict[str, Any]] = []
    for page in range(1, MAX_QUEUE_PAGES + 1):
        path = f"queues/{urllib.parse.quote(vhost, safe='')}?{query}&page={page}"
        answer = call(base_url, "GET", path) or {}
        items.extend(answer.get("items") or [])
        if page >= int(answer.get("page_count") or 1):
            break
    return items
