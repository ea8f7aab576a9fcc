#!/opt/fairway/bin/python
"""Create the first operator account if it does not exist yet (docker compose, Ansible).

Reads ``FAIRWAY_OPERATOR_USER`` and ``FAIRWAY_OPERATOR_PASSWORD`` (plus the usual
``FAIRWAY_*`` settings), creates the user through :mod:`fairway.storage.accounts` and binds
their notification exchange the way the web API does. Prints one JSON line:
``{"user": ..., "created": true|false}``, then the dashboard URL when
``FAIRWAY_DASHBOARD_URL`` is set. An existing user is left exactly as it is.
"""

from __future__ import annotations

import json
import os
import sys

from fairway.kernel.settings import Settings
from fairway.provision import create_user
from fairway.storage import accounts, mongo


def ensure_operator(user_id: str, password: str) -> bool:
    """Create operator ``user_id`` unless it exists; True if it was created."""
    settings = Settings.from_env()
    db = mongo.connect(settings)
    user = create_user(settings, db, user_id, password, accounts.OPERATOR, None, if_missing=True)
    return user is not None


def main() -> int:
    """Entry point; exit 1 with a message when the variables are missing."""
    user_id = os.environ.get("FAIRWAY_OPERATOR_USER", "")
    password = os.environ.get("FAIRWAY_OPERATOR_PASSWORD", "")
    if not user_id or not password:
        print("set FAIRWAY_OPERATOR_USER and FAIRWAY_OPERATOR_PASSWORD", file=sys.stderr)
        return 1
    created = ensure_operator(user_id, password)
    print(json.dumps({"user": user_id, "created": created}), flush=True)
    url = os.environ.get("FAIRWAY_DASHBOARD_URL")
    if url:
        print(f"Fairway is up. Dashboard: {url}  (log in as {user_id!r})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
