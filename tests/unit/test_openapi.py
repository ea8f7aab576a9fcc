"""The OpenAPI description (web.openapi): complete, valid OpenAPI 3.1, bounds from the
settings, and request validation that names the bad parameter. No services needed: the
app's database client connects lazily and these requests never reach it."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from openapi_spec_validator import validate

from fairway.kernel.settings import Settings
from web import create_app
from web.openapi import describe, operations

SECRET = "unit-test-secret-key-0123456789abcdef"


def make_app(**overrides: Any) -> Flask:
    settings = Settings.from_env({"FAIRWAY_SECRET_KEY": SECRET}, **overrides)
    return create_app({"FAIRWAY_SETTINGS": settings, "TESTING": True})


def undescribed(app: Flask) -> list[str]:
    """Every ``METHOD /api/...`` the app serves that its description lacks."""
    paths = describe(app)["paths"]
    missing = []
    for rule, method, _view in operations(app):
        path = rule.rule.replace("<", "{").replace(">", "}")
        if method.lower() not in paths.get(path, {}):
            missing.append(f"{method} {rule.rule}")
    return missing


def test_every_api_endpoint_is_described() -> None:
    app = make_app()
    assert undescribed(app) == []
    assert len(list(operations(app))) >= 27


def test_an_endpoint_without_a_description_is_caught() -> None:
    app = make_app()
    app.add_url_rule("/api/secret-thing/<thing>", "secret", lambda thing: {}, methods=["POST"])
    assert undescribed(app) == ["POST /api/secret-thing/<thing>"]


def test_the_description_is_valid_openapi_3_1() -> None:
    document = describe(make_app())
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerToken"]["scheme"] == "bearer"
    assert schemes["sessionCookie"]["in"] == "cookie"
    assert schemes["csrfToken"] == {**schemes["csrfToken"], "in": "header", "name": "X-CSRF-Token"}


def test_every_operation_documents_its_errors_and_who_may_call_it() -> None:
    document = describe(make_app())
    error = {"$ref": "#/components/schemas/Error"}
    for path, item in document["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            assert any(code.startswith("2") for code in responses), (method, path)
            for code, answer in responses.items():
                if code.startswith("4") or code.startswith("5"):
                    assert answer["content"]["application/json"]["schema"] == error
            if {"bearerToken": []} in op["security"]:
                assert "login_required" in responses["401"]["description"], (method, path)
            if method in ("post", "put", "patch", "delete"):
                assert "csrf_failed" in responses["400"]["description"], (method, path)
    report = document["paths"]["/api/reports"]["post"]
    assert "503" in report["responses"] and "job_quota" in report["responses"]["429"]["description"]
    register = document["paths"]["/api/devices"]["post"]["responses"]
    assert "forbidden" in register["403"]["description"]


def test_bounds_that_are_settings_are_described_with_their_value() -> None:
    schemas = describe(make_app(api_page_max=50, api_token_ttl_s=600.0))
    telemetry = schemas["paths"]["/api/devices/{device_id}/telemetry"]["get"]
    limit = next(p for p in telemetry["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 50 and limit["schema"]["minimum"] == 1
    ttl = schemas["components"]["schemas"]["NewToken"]["properties"]["ttl_s"]
    assert "600" in str(ttl) and "x-fairway" not in str(schemas)


def test_report_bounds_are_in_the_description() -> None:
    report = describe(make_app())["components"]["schemas"]["NewReport"]
    bucket = report["properties"]["bucket"]
    assert bucket["minimum"] == 1 and bucket["maximum"] == 366 * 24 * 3600
    assert bucket["multipleOf"] == 1
    assert report["additionalProperties"] is False
    assert set(report["required"]) == {"from", "to", "bucket"}


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [
        ({"user": 7, "password": "x"}, "bad_parameter", "'user'"),
        ({"user": "ada"}, "bad_parameter", "'password' is required"),
        ({"user": "ada", "password": "x", "remember": True}, "bad_parameter", "'remember'"),
        (["ada", "x"], "bad_request", "JSON object"),
        ({"user": "ada", "password": "x" * 2000}, "bad_parameter", "'password'"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_parameter(body: Any, code: str, named: str) -> None:
    answer = make_app().test_client().post("/api/login", json=body)
    assert answer.status_code == 400
    assert answer.get_json()["error"] == code and named in answer.get_json()["message"]


def test_the_description_is_served_to_anyone_and_the_page_needs_a_login() -> None:
    client = make_app().test_client()
    served = client.get("/api/openapi.json")
    assert served.status_code == 200 and served.get_json()["openapi"] == "3.1.0"
    page = client.get("/api-docs")
    assert page.status_code == 302 and "/login" in page.headers["Location"]
