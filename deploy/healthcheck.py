#!/opt/fairway/bin/python
"""Container health check: ``fairway-healthcheck URL [URL ...]``; exit 0 when every target
answers (a process serving on several ports: the web app and its broker-auth port).

``http://host:port/path`` is healthy on any HTTP status below 500 (the process serves);
``tcp://host:port`` is healthy when a connection opens (the process listens).
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT_S = 5.0


def healthy(url: str) -> bool:
    """Whether the process behind ``url`` answers."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "tcp":
        try:
            with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT_S):
                return True
        except OSError:
            return False
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def main(argv: list[str]) -> int:
    """Exit status for the container runtime: 0 healthy, 1 not, 2 usage."""
    if len(argv) < 2:
        print(
            "usage: fairway-healthcheck http://HOST:PORT/PATH | tcp://HOST:PORT [...]",
            file=sys.stderr,
        )
        return 2
    return 0 if all(healthy(url) for url in argv[1:]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
