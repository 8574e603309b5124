"""Property-based fuzz of the app's own OpenAPI schema (schemathesis over the FakeEngine app):
no generated request, valid or not, gets a 5xx, and every error uses the OpenAI envelope."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings

from tests.api.api_fakes import make_app

APP, ENGINE = make_app()
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)


@SCHEMA.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    response = case.call()
    assert response.status_code < 500, (case.path, case.body, response.text[:500])
    if response.status_code >= 400 and case.path.startswith("/v1"):
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
