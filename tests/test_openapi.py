"""The OpenAPI description matches the app's routes and payloads; the docs page renders it."""

from __future__ import annotations

import re

import pytest
import requests

from app.store.serialization import OPTIONAL_TEXTS, OPTIONAL_TIMES, public_json
from tests.browser import make_page  # noqa: F401

# Browser pages and the admin dashboard are not part of the HTTP API.
NOT_API = {"static", "dashboard", "demo"}


def _documented(spec: dict) -> set[tuple[str, str]]:
    paths = spec["paths"].items()
    return {(path, method.upper()) for path, item in paths for method in item if method != "parameters"}


def _routes(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".")[0] in NOT_API:
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        out |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return out


def test_spec_is_public_and_openapi_3_1(client):
    resp = client.get("/api/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    spec = resp.get_json()
    assert spec["openapi"] == "3.1.0"
    schemes = spec["components"]["securitySchemes"]
    assert schemes["apiKey"]["scheme"] == "bearer" and schemes["subscriberToken"]["scheme"] == "bearer"


def test_every_route_is_documented_and_nothing_else(app, client):
    spec = client.get("/api/openapi.json").get_json()
    assert _documented(spec) == _routes(app)


def test_every_operation_documents_its_auth_and_errors(client):
    spec = client.get("/api/openapi.json").get_json()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            assert "security" in op, (path, method)
            if op["security"] and path != "/metrics":
                assert "401" in op["responses"], (path, method)
            if "requestBody" in op:
                assert {"400", "413", "415", "422"} <= set(op["responses"]), (path, method)


def test_notification_schema_matches_the_wire(client, auth):
    spec = client.get("/api/openapi.json").get_json()
    schema = spec["components"]["schemas"]["Notification"]
    created = client.post("/api/notifications", json={"user_id": "oa", "message": "m"}, headers=auth)
    assert set(schema["required"]) == set(created.get_json())
    doc = {"_id": "x", "user_id": "u", "message": "m", "created_at": _now()}
    assert set(created.get_json()) == set(public_json(doc))
    optional = dict.fromkeys(OPTIONAL_TIMES, _now()) | dict.fromkeys(OPTIONAL_TEXTS, "k")
    assert set(public_json({**doc, **optional})) == set(schema["properties"]), "every optional field"
    assert schema["properties"]["seq"]["type"] == ["integer", "null"]


def test_error_schema_matches_errors(client, auth):
    spec = client.get("/api/openapi.json").get_json()
    error = spec["components"]["schemas"]["Error"]["properties"]["error"]
    body = client.post("/api/notifications", json={"user_id": "a"}, headers=auth).get_json()["error"]
    assert set(error["required"]) <= set(body) <= set(error["properties"])
    assert body["field"] == "message"


def test_configured_limits_are_in_the_spec(make_app):
    app = make_app(TOKEN_MAX_TTL_SECONDS=1234, MAX_BODY_BYTES=4321)
    spec = app.test_client().get("/api/openapi.json").get_json()
    assert spec["components"]["schemas"]["TokenRequest"]["properties"]["ttl_seconds"]["maximum"] == 1234
    assert "4321" in spec["components"]["responses"]["E413"]["description"]


def test_docs_page_is_served_with_its_assets(client):
    resp = client.get("/api/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    html = resp.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert len(assets) == 2 and "//" not in "".join(a[1:] for a in assets)  # nothing from a CDN
    for asset in assets:
        assert client.get(asset).status_code == 200


@pytest.mark.browser
def test_docs_page_renders_every_endpoint_with_an_example(live, make_page):  # noqa: F811
    server = live()
    page = make_page(bypass_csp=False)  # the page's own CSP applies: a violation is a console error
    spec = requests.get(server.url + "/api/openapi.json", timeout=10).json()
    operations = _documented(spec)
    page.goto(server.url + "/api/docs")
    page.wait_for_selector("body[data-ready=true]")
    sections = page.locator("section.op")
    assert sections.count() == len(operations)
    examples = page.locator("section.op pre.example").all_inner_texts()
    assert len(examples) == len(operations) and all(text.strip() for text in examples)
    post = page.locator("#post-api-notifications pre.example").inner_text()
    assert "curl" in post and "Idempotency-Key" in post and '"message"' in post
    assert "notify.send(" in page.locator("#post-api-notifications pre.example-python").inner_text()
    assert "EventSource" in page.locator("#get-stream pre.example").inner_text()
    assert "WebSocket" in page.locator("#get-ws pre.example").inner_text()
    page.save_screenshot("api-docs")


def _now():
    from app.store.serialization import utc_now_ms

    return utc_now_ms()
