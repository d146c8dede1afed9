"""Every sandbox route against the real gateway's OpenAPI document.

The document's path comes from ``FLEET_GATEWAY_OPENAPI`` (``.ci/run`` sets it
to ``../shared/gateway/openapi-1.4.8.json``). In CI the variable must be set:
the test fails rather than skips, so the comparison cannot silently vanish.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from sandbox.routes import ROUTES, Route

LOCAL_DEFAULT = Path("/work/shared/gateway/openapi-1.4.8.json")


def _document() -> dict[str, Any]:
    name = os.environ.get("FLEET_GATEWAY_OPENAPI")
    if not name:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("FLEET_GATEWAY_OPENAPI is not set; CI must point it at the document")
        if not LOCAL_DEFAULT.exists():
            pytest.fail(f"FLEET_GATEWAY_OPENAPI is not set and {LOCAL_DEFAULT} does not exist")
        name = str(LOCAL_DEFAULT)
    doc: dict[str, Any] = json.loads(Path(name).read_text())
    return doc


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return _document()


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
    return schema


def _operation(doc: dict[str, Any], route: Route) -> dict[str, Any]:
    path_item = doc["paths"].get(route.path)
    assert path_item is not None, f"{route.path} is not in the document"
    op = path_item.get(route.method.lower())
    assert op is not None, f"{route.method} {route.path} is not in the document"
    result: dict[str, Any] = op
    return result


def response_properties(doc: dict[str, Any], method: str, path: str) -> set[str] | None:
    """The documented 2xx JSON answer's fields, or None where the document has none."""
    op = doc["paths"][path][method.lower()]
    for code, response in op.get("responses", {}).items():
        content = response.get("content", {}).get("application/json")
        if code.startswith("2") and content:
            props = set(_resolve(doc, content["schema"]).get("properties", {}))
            if props:
                return props
    return None


def _request_schema(doc: dict[str, Any], op: dict[str, Any]) -> dict[str, Any] | None:
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return None
    return _resolve(doc, content["schema"])


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_route_exists_with_compatible_request_body(document: dict[str, Any], route: Route) -> None:
    op = _operation(document, route)
    schema = _request_schema(document, op)
    if route.body is None:
        # A route whose body the sandbox ignores must not have a required one there.
        if schema is not None:
            assert not schema.get("required"), (
                f"{route.path} needs body fields {schema['required']}"
            )
        return
    assert schema is not None, f"{route.method} {route.path} takes no JSON body in the document"
    props = set(schema.get("properties", {}))
    accepted = set(route.body)
    assert accepted <= props, f"fields not in the document: {sorted(accepted - props)}"
    required = {name for name, f in route.body.items() if f.required}
    assert required == set(schema.get("required", [])), route.path
    if schema.get("additionalProperties") is False:
        # The real model forbids extras; so must the double (check_body always does).
        assert route.aliases is None or set(route.aliases.values()) <= props


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_query_parameters_are_the_documents(document: dict[str, Any], route: Route) -> None:
    op = _operation(document, route)
    declared = {p["name"] for p in op.get("parameters", []) if p.get("in") == "query"}
    used = QUERY_USED.get(route.tool, set())
    assert used <= declared, f"{route.path}: query {sorted(used - declared)} not in the document"


def test_the_document_check_catches_an_unknown_field(document: dict[str, Any]) -> None:
    from sandbox.validate import F

    bogus = Route("POST", "/v1/register", "register", ROUTES[0].handler, {"tier": F("str")})
    op = _operation(document, bogus)
    schema = _request_schema(document, op)
    props = set((schema or {}).get("properties", {}))
    assert not {"tier"} <= props


QUERY_USED: dict[str, set[str]] = {
    "get_balance": {"currency"},
    "get_transactions": {"limit", "offset"},
    "get_usage_summary": {"since"},
    "estimate_cost": {"tool_name", "quantity", "agent_id"},
    "get_volume_discount": {"agent_id", "tool_name", "quantity"},
    "get_exchange_rate": {"from_currency", "to_currency"},
    "get_agent_leaderboard": {"metric", "limit"},
    "query_metrics": {"agent_id", "metric_name", "since", "limit"},
    "search_agents_by_metrics": {"metric_name", "min_value", "max_value", "limit"},
    "get_claim_chains": {"limit"},
    "list_disputes": {"agent_id", "limit"},
    "search_services": {"query", "category", "tags", "max_cost", "limit", "offset"},
    "best_match": {"query", "budget", "limit"},
    "get_messages": {"agent_id", "thread_id", "limit"},
    "get_events": {"event_type", "since_id", "limit"},
}
