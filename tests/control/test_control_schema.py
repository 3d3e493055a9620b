"""The control plane's OpenAPI schema is published in docs/ and kept equal to the routes (`make schema`),
and every route but the health check declares the Bearer key."""

from __future__ import annotations

import json
from pathlib import Path

from ulpt_control.app import openapi_schema

PUBLISHED = Path(__file__).resolve().parents[2] / "docs" / "control.openapi.json"


def test_published_schema_equals_the_routes() -> None:
    assert json.loads(PUBLISHED.read_text()) == json.loads(json.dumps(openapi_schema())), "run `make schema`"


def test_every_route_but_health_needs_a_bearer_key() -> None:
    schema = openapi_schema()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            secured = operation.get("security") == [{"HTTPBearer": []}]
            assert secured == (path != "/healthz"), f"{method.upper()} {path}"
