"""The Fairway web app: Flask app factory, blueprints, extensions.

Blueprints are imported inside :func:`create_app`, so importing a module of this
package (the push gateway is ``web.gateway``) does not load Flask's whole app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fairway.settings import Settings

if TYPE_CHECKING:
    from flask import Flask


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app; settings come from ``FAIRWAY_*`` variables unless ``test_config`` says."""
    from flask import Flask

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
        jobs,
        pages,
    )

    app = Flask(__name__)
    if test_config is None or "FAIRWAY_SETTINGS" not in test_config:
        app.config["FAIRWAY_SETTINGS"] = Settings.from_env()
    if test_config:
        app.config.update(test_config)
    settings = app.config["FAIRWAY_SETTINGS"]
    if settings.proxy_hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    database.init_app(app)
    broker.init_app(app)
    errors.init_app(app)
    auth.init_app(app)
    for blueprint in (
        health.bp,
        broker_auth.bp,
        auth.bp,
        api_tenants.bp,
        api_devices.bp,
        api_users.bp,
        api_rules.bp,
        jobs.bp,
        pages.bp,
    ):
        app.register_blueprint(blueprint)
    return app
