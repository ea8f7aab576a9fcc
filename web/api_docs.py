"""The API's description: ``/api/openapi.json`` (anyone, for client generators) and a
page that renders it for logged-in users (``/api-docs``, server-side: no script, no CDN)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template

import web.models as models
from web.openapi import describe, operation
from web.pages import page_login_required

bp = Blueprint("api_docs", __name__)
METHODS = ("get", "post", "put", "patch", "delete")


@bp.get("/api/openapi.json")
@operation(answer=models.Description)
def openapi_json() -> dict[str, Any]:
    """This API's OpenAPI 3.1 description."""
    return describe(current_app._get_current_object())  # type: ignore[attr-defined]


@bp.get("/api-docs")
@page_login_required
def api_docs() -> str:
    """Every operation with its parameters, body and answers, and every schema."""
    document = describe(current_app._get_current_object())  # type: ignore[attr-defined]
    ops = [
        (method.upper(), path, op)
        for path, item in document["paths"].items()
        for method in METHODS
        if (op := item.get(method)) is not None
    ]
    schemas = document["components"]["schemas"]
    return render_template(
        "api_docs.html", document=document, operations=ops, schemas=schemas, kind=kind
    )


def kind(schema: dict[str, Any]) -> str:
    """A JSON schema in a few words: type, bounds, pattern, choices, reference."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(kind(s) for s in schema[key])
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    if "const" in schema:
        return repr(schema["const"])
    out = str(schema.get("type", "any"))
    if out == "array":
        items = schema.get("items") or {}
        out = f"array of {kind(items)}" if items else "array"
    elif out == "object" and isinstance(schema.get("additionalProperties"), dict):
        out = f"object of {kind(schema['additionalProperties'])}"
    bounds = [
        f"{label} {schema[key]:g}" if isinstance(schema[key], float) else f"{label} {schema[key]}"
        for key, label in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("exclusiveMaximum", "<"),
            ("minLength", "length >="),
            ("maxLength", "length <="),
            ("multipleOf", "multiple of"),
            ("pattern", "matching"),
            ("format", "format"),
        )
        if key in schema
    ]
    return ", ".join([out, *bounds])
