"""The API against its own OpenAPI schema: schemathesis generates valid and invalid requests for
every operation (a bounded number each) and checks every answer: no 5xx, every status code,
content type and body as the schema documents them."""
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from pipeline.artefact.model import Model
from pipeline.serve.api import create_app

# Examples per operation: enough to reach every documented status (200, 400, 413, 422) in
# seconds; raise it locally for a deeper run.
EXAMPLES_PER_OPERATION = 60


@pytest.fixture
def api_schema(trained_model: Model) -> Any:
    """The OpenAPI schema of the app production runs, served by that app over ASGI."""
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(trained_model))


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_every_answer_matches_the_schema_and_none_is_a_server_error(case: Any) -> None:
    case.call_and_validate()
