"""The Fairway web app: Flask app factory, blueprints, extensions.

``create_app(test_config=None)`` builds the app: settings, the database and broker
extensions (``init_app``), JSON errors, authentication and one blueprint per concern.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from flask import Flask, Response
from werkzeug.middleware.proxy_fix import ProxyFix

from fairway.kernel.settings import Settings
from web import (
    api_devices,
    api_docs,
    api_rejections,
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
    manage,
    pages,
    tenant_stats,
)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app; settings come from ``FAIRWAY_*`` variables unless ``test_config`` says."""
    app = Flask(__name__)
    if test_config is None or "FAIRWAY_SETTINGS" not in test_config:
        app.config["FAIRWAY_SETTINGS"] = Settings.from_env()
    if test_config:
        app.config.update(test_config)
    settings = app.config["FAIRWAY_SETTINGS"]
    if app.config.get("MAX_CONTENT_LENGTH") is None:
        app.config["MAX_CONTENT_LENGTH"] = settings.web_max_body_bytes
    if settings.proxy_hops:
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    database.init_app(app)
    broker.init_app(app)
    errors.init_app(app)
    auth.init_app(app)
    tenant_stats.init_app(app)
    for blueprint in (
        health.bp,
        broker_auth.bp,
        auth.bp,
        api_tenants.bp,
        api_devices.bp,
        api_users.bp,
        api_rules.bp,
        api_rejections.bp,
        tenant_stats.bp,
        jobs.bp,
        api_docs.bp,
        pages.bp,
        manage.bp,
    ):
        app.register_blueprint(blueprint)
    headers = security_headers(settings)

    @app.after_request
    def _secure(response: Response) -> Response:
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        return response

    return app


def security_headers(settings: Settings) -> dict[str, str]:
    """Headers on every answer: a strict CSP (scripts and styles only from this origin,
    live events also from the gateway), no framing, no MIME sniffing, no cross-site
    referrer."""
    gateway = (
        settings.gateway_public_url or f"http://{settings.gateway_host}:{settings.gateway_port}"
    )
    parts = urllib.parse.urlsplit(gateway)
    policy = "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src 'self' {parts.scheme}://{parts.netloc}",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
    }
