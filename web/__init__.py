"""The Fairway web app: Flask app factory, blueprints, extensions."""

from __future__ import annotations

from typing import Any

from flask import Flask

from fairway.settings import Settings
from web import broker_auth, database, health


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app; settings come from ``FAIRWAY_*`` variables unless ``test_config`` says."""
    app = Flask(__name__)
    app.config.from_mapping(FAIRWAY_SETTINGS=Settings.from_env())
    if test_config:
        app.config.update(test_config)
    database.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(broker_auth.bp)
    return app
