"""``fairway web``: the app served by waitress, like every other process's ``run(settings)``."""

from __future__ import annotations

import waitress

from fairway.kernel.settings import Settings
from web import create_app


def run(settings: Settings, threads: int = 8) -> None:
    """Serve the pages, the JSON API and the broker's auth endpoints until stopped."""
    app = create_app({"FAIRWAY_SETTINGS": settings})
    waitress.serve(app, host=settings.web_host, port=settings.web_port, threads=threads)
