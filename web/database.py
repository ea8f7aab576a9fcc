"""MongoDB for the web app: one client per app, the database on ``g`` per request."""

from __future__ import annotations

from flask import Flask, current_app, g
from pymongo.database import Database

from fairway.storage import mongo


def init_app(app: Flask) -> None:
    """Open the app's client (pymongo pools connections and is thread-safe)."""
    app.extensions["fairway_db"] = mongo.connect(app.config["FAIRWAY_SETTINGS"])


def get_db() -> Database:
    """This request's database handle."""
    if "db" not in g:
        g.db = current_app.extensions["fairway_db"]
    return g.db
