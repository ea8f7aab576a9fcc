"""The JSON API's OpenAPI 3.1 description and request validation, from one set of models.

Every ``/api/`` view is decorated with :func:`operation`, which names the pydantic models
of its query string and JSON body (``web.models``), its answer and the errors it may
give. The decorator validates the request with those models before the view runs (a bad
parameter is a 400 ``{error, message}`` naming it) and hands the view the parsed
values; :func:`describe` builds the OpenAPI document from the same declarations and the
app's URL map, so the description cannot drift from what the code checks. Who may call
an operation comes from ``web.auth``'s decorators (``login_required``,
``roles_required``), read off the view.

Bounds that are settings (``FAIRWAY_API_PAGE_MAX`` ...) are validated against this
app's settings and written into the description with their configured value.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar

from flask import Flask, current_app, request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from werkzeug.routing import Rule

import web.models as models
from fairway.kernel.settings import Settings
from web.errors import ApiError
from web.models import SETTING_MAX_ITEMS, SETTING_MAXIMUM

F = TypeVar("F", bound=Callable[..., Any])
REF = "#/components/schemas/{model}"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Operation:
    """What one view accepts and answers (read by :func:`describe`)."""

    query: type[BaseModel] | None
    body: type[BaseModel] | None
    body_required: bool
    status: int
    answer: type[BaseModel] | None
    content_type: str
    errors: dict[int, tuple[str, ...]]
    headers: dict[str, str]
    links: dict[str, dict[str, Any]] = field(default_factory=dict)


def operation(
    *,
    query: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    status: int = 200,
    answer: type[BaseModel] | None = None,
    content_type: str = "application/json",
    errors: Mapping[int, Iterable[str]] | None = None,
    headers: dict[str, str] | None = None,
    links: dict[str, dict[str, Any]] | None = None,
) -> Callable[[F], F]:
    """Declare and validate a view: the parsed ``query`` and ``body`` models are passed to
    it as keyword arguments of those names. ``errors`` maps statuses to the error codes
    the view itself may answer (authentication, CSRF and validation errors are added)."""
    op = Operation(
        query,
        body,
        body_required,
        status,
        answer,
        content_type,
        {code: tuple(names) for code, names in (errors or {}).items()},
        headers or {},
        links or {},
    )

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            context = {"settings": current_app.config["FAIRWAY_SETTINGS"]}
            if query is not None:
                kwargs["query"] = _validate(query, request.args.to_dict(), context)
            if body is not None:
                kwargs["body"] = _validate(body, _json_object(body_required), context)
            return view(*args, **kwargs)

        wrapper.fairway_operation = op  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def _json_object(required: bool) -> dict[str, Any]:
    if not required and not request.get_data(cache=True):
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "send a JSON object with content-type application/json")
    return body


def _validate(model: type[BaseModel], data: dict[str, Any], context: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ApiError(400, "bad_parameter", validation_message(exc)) from None


def validation_message(exc: ValidationError) -> str:
    """One sentence naming the first bad parameter and what is wrong with it."""
    error = exc.errors(include_url=False)[0]
    name = str(error["loc"][0]) if error["loc"] else "the request"
    kind, message = error["type"], error["msg"]
    if kind == "missing":
        return f"'{name}' is required"
    if kind == "extra_forbidden":
        return f"'{name}' is not a parameter of this request"
    message = message.removeprefix("Value error, ")
    return f"'{name}': {message[:1].lower()}{message[1:]}"


# -- the description ---------------------------------------------------------------------
@dataclass
class _Components:
    models: dict[tuple[type[BaseModel], str], None] = field(default_factory=dict)

    def ref(self, model: type[BaseModel], mode: str) -> dict[str, str]:
        self.models[(model, mode)] = None
        return {"$ref": REF.format(model=model.__name__)}


def operations(app: Flask) -> Iterable[tuple[Rule, str, Callable[..., Any]]]:
    """(rule, method, view) of every ``/api/`` endpoint of ``app``."""
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            yield rule, method, view


def describe(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s ``/api/`` endpoints (cached per app)."""
    cached = app.extensions.get("fairway_openapi")
    if cached is not None:
        return cached
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for rule, method, view in operations(app):
        op: Operation | None = getattr(view, "fairway_operation", None)
        if op is None:
            continue  # undescribed: tests/unit/test_openapi.py fails on it
        path = _path(rule)
        paths.setdefault(path, {})[method.lower()] = _operation(
            rule, method, view, op, components, models.Error
        )
    schemas = _schemas(components)
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Fairway API",
            "version": models.API_VERSION,
            "description": models.API_DESCRIPTION,
        },
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": schemas, "securitySchemes": models.SECURITY_SCHEMES},
    }
    _apply_settings(document, app.config["FAIRWAY_SETTINGS"])
    app.extensions["fairway_openapi"] = document
    return document


def _path(rule: Rule) -> str:
    out = rule.rule
    for argument in rule.arguments:
        out = out.replace(f"<{argument}>", "{" + argument + "}")
    return out


def _schemas(components: _Components) -> dict[str, Any]:
    # One schema per model: request models in validation mode, answers in serialization.
    pairs = list(components.models)
    _, document = models_json_schema(
        [(model, mode) for model, mode in pairs],  # type: ignore[misc]
        ref_template=REF,
    )
    schemas = document.get("$defs", {})
    return dict(sorted(schemas.items()))


def _apply_settings(node: Any, settings: Settings) -> None:
    if isinstance(node, dict):
        name = node.pop(SETTING_MAXIMUM, None)
        if name is not None:
            node["maximum"] = getattr(settings, name)
            note = f"At most FAIRWAY_{name.upper()} (here {getattr(settings, name):g})."
            node["description"] = f"{node.get('description', '')} {note}".strip()
        name = node.pop(SETTING_MAX_ITEMS, None)
        if name is not None:
            node["maxItems"] = getattr(settings, name)
            note = f"At most FAIRWAY_{name.upper()} (here {getattr(settings, name):g}) items."
            node["description"] = f"{node.get('description', '')} {note}".strip()
        for value in node.values():
            _apply_settings(value, settings)
    elif isinstance(node, list):
        for value in node:
            _apply_settings(value, settings)


def _operation(
    rule: Rule,
    method: str,
    view: Callable[..., Any],
    op: Operation,
    components: _Components,
    error_model: type[BaseModel],
) -> dict[str, Any]:
    doc = (inspect.getdoc(view) or "").replace("``", "`")
    first, _, description = doc.partition("\n\n")
    summary = " ".join(first.split())
    roles: tuple[str, ...] | None = getattr(view, "fairway_roles", None)
    login = bool(getattr(view, "fairway_login", False) or roles)
    out: dict[str, Any] = {
        "operationId": view.__name__,
        "summary": summary.strip(),
        "tags": [_tag(rule)],
        "parameters": _parameters(rule, op, components),
        "security": _security(method, login),
    }
    if description.strip():
        out["description"] = description.strip()
    if roles:
        who = f"Roles: {', '.join(roles)}."
        out["description"] = f"{out.get('description', '')}\n\n{who}".strip()
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": components.ref(op.body, "validation")}},
        }
    out["responses"] = _responses(rule, method, op, login, roles, components, error_model)
    return out


TAGS = {
    "login": "session",
    "logout": "session",
    "me": "session",
    "tokens": "session",
    "push-token": "session",
    "reports": "jobs",
    "exports": "jobs",
    "openapi.json": "description",
}


def _tag(rule: Rule) -> str:
    """Operations grouped by their first path segment (sessions and jobs together)."""
    segment = rule.rule.split("/")[2]
    return TAGS.get(segment, segment)


def _parameters(rule: Rule, op: Operation, components: _Components) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in sorted(rule.arguments)
    ]
    if op.query is not None:
        schema = op.query.model_json_schema(ref_template=REF)
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            param: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": _text_schema(prop),
            }
            about = prop.get("description") or next(
                (a["description"] for a in prop.get("anyOf", []) if "description" in a), None
            )
            if about:
                param["description"] = about
            params.append(param)
    return params


def _text_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: absent is how a query string says null."""
    schema = dict(prop)
    alternatives = [s for s in schema.pop("anyOf", []) if s.get("type") != "null"]
    if len(alternatives) == 1:
        schema = {**alternatives[0], **schema}
    elif alternatives:
        schema["anyOf"] = alternatives
    if schema.get("default", 0) is None:
        del schema["default"]
    return {k: v for k, v in schema.items() if k not in ("title", "description")}


def _security(method: str, login: bool) -> list[dict[str, list[str]]]:
    session: dict[str, list[str]] = {"sessionCookie": []}
    if method in UNSAFE:
        session["csrfToken"] = []
    if login:
        return [{"bearerToken": []}, session]
    # Anyone may call it; a session still needs its CSRF token for a change.
    return [{}, session] if method in UNSAFE else [{}]


def _responses(
    rule: Rule,
    method: str,
    op: Operation,
    login: bool,
    roles: tuple[str, ...] | None,
    components: _Components,
    error_model: type[BaseModel],
) -> dict[str, Any]:
    errors: dict[int, set[str]] = {code: set(names) for code, names in op.errors.items()}

    def add(status: int, *codes: str) -> None:
        errors.setdefault(status, set()).update(codes)

    # A bearer header that is unknown or expired is refused on every endpoint.
    add(401, "invalid_token")
    if login:
        add(401, "login_required")
    if roles:
        add(403, "forbidden")
    if op.query is not None or op.body is not None:
        add(400, "bad_parameter")
    if op.body is not None:
        add(400, "bad_request")
        add(413, "too_large")
    if method in UNSAFE:
        add(400, "csrf_failed")
    success: dict[str, Any] = {"description": _reason(op.status)}
    if op.answer is not None:
        schema = components.ref(op.answer, "serialization")
        success["content"] = {op.content_type: {"schema": schema}}
    elif op.content_type != "application/json":
        success["content"] = {op.content_type: {"schema": {"type": "string"}}}
    if op.headers:
        success["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in op.headers.items()
        }
    if op.links:
        success["links"] = op.links
    responses: dict[str, Any] = {str(op.status): success}
    error_ref = components.ref(error_model, "serialization")
    for status in sorted(errors):
        codes = ", ".join(f"`{c}`" for c in sorted(errors[status]))
        responses[str(status)] = {
            "description": f"{_reason(status)}: `error` is one of {codes}",
            "content": {"application/json": {"schema": error_ref}},
        }
    return responses


def _reason(status: int) -> str:
    from http import HTTPStatus

    return HTTPStatus(status).phrase
