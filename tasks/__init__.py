"""Celery jobs: reports, CSV exports and retention, off the web request path.

Workers: ``celery -A tasks worker -Q cpu`` (reports, exports) and
``celery -A tasks worker -Q maintenance`` (retention); the schedule:
``celery -A tasks beat``. Settings come from ``FAIRWAY_*`` variables.
"""

from __future__ import annotations

from typing import Any

_apps: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    # ``celery -A tasks`` looks up ``tasks.app``; it is built on first use, so that
    # importing a submodule (as the web app does) creates no app from the environment.
    if name == "app":
        if "app" not in _apps:
            from fairway.kernel.settings import Settings
            from tasks.celery_app import make_celery

            _apps["app"] = make_celery(Settings.from_env())
        return _apps["app"]
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
