"""The Fairway web app: Flask app factory, blueprints, extensions."""

from __future__ import annotations

from typing import Any

from flask import Flask

from fairway.settings import Settings
from web import (
    api_devices,
    api_rules,
    api_tenants,
    api_users,
    auth,
    broker,
    broker_auth,
    database,
    errors,
    health,
    pages,
)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app; settings come from ``FAIRWAY_*`` variables unless ``test_config`` says."""
    app = Flask(__name__)
    if test_config is None or "FAIRWAY_SETTINGS" not in test_config:
        app.config["FAIRWAY_SETTINGS"] = Settings.from_env()
    if test_config:
        app.config.update(test_config)
    database.init_app(app)
    broker.init_app(app)
    errors.init_app(app)
    auth.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(broker_auth.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(api_tenants.bp)
    app.register_blueprint(api_devices.bp)
    app.register_blueprint(api_users.bp)
    app.register_blueprint(api_rules.bp)
    app.register_blueprint(pages.bp)
    return app
