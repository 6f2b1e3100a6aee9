"""Contract fuzzing: schemathesis drives every operation in the OpenAPI with valid and invalid input.

Every response must be documented (status, content type, body schema), schema-valid requests must be
accepted (2xx, or 404/409/422 for links and names that do not exist or are taken, or a reused
Idempotency-Key), invalid ones rejected with a
4xx, and nothing may answer 5xx. The app is the real one on the test database, so inserts really happen.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from litestar import Litestar
from schemathesis import GenerationMode

from services.api.app import create_app
from shared.settings import Settings

# The document only: building the app opens no connection, and the calls go to the `app` fixture below.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi_schema.to_schema())
# ~300 examples per operation keep the whole module under ~30 s on the 2-core CI machine.
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=300)
# A valid request may still be refused for what earlier examples did: a name taken (409), or an
# Idempotency-Key that hypothesis reuses with another body (422). Both are documented answers.
schema.config.checks.positive_data_acceptance.expected_statuses = [
    *schema.config.checks.positive_data_acceptance.expected_statuses,
    "422",
]


@pytest.fixture
def app(settings: Settings, db: object) -> Litestar:
    return create_app(settings)


def errors_say_what_and_where(ctx, response, case) -> None:
    """Beyond the schema: a 400 names at least one field, a 503 says when to retry, all carry a trace id."""
    assert response.headers.get("x-request-id"), "no X-Request-ID on the response"
    if response.status_code == 400:
        assert response.json()["fields"], f"a 400 that names no field: {response.text}"
    if response.status_code == 503:
        assert response.headers.get("retry-after"), "a 503 without Retry-After"


@schema.parametrize()
# One app and one database per operation, shared by its examples: a name taken by an earlier example is a
# documented 409, which is part of what is being checked.
@hypothesis_settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_operation_keeps_its_contract(case, app: Litestar) -> None:
    case.call_and_validate(app=app, additional_checks=[errors_say_what_and_where])
