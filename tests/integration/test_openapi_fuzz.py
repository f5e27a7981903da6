"""Property-based run of schemathesis over the served OpenAPI document: no input, however
odd, gets a 5xx answer. Runs with a valid key (so calls reach the handlers) on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from data_exhaust.api.app import create_app
from data_exhaust.services import Services, build_services
from tests.conftest import make_settings


@pytest.fixture
def fuzz_services(tmp_path: Path, sqlite_url: str) -> Iterator[Services]:
    built = build_services(make_settings(tmp_path / "data", sqlite_url))
    yield built
    built.close()


def test_no_input_gets_a_server_error(fuzz_services: Services) -> None:
    key = fuzz_services.keys.create("fuzz", ["c1"], ["exhaust", "ingest", "admin"])[1]
    auth = {"Authorization": f"Bearer {key}", "X-Channel-ID": "c1"}
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(fuzz_services, run_executor=False)
    )
    # an Err (the schema did not load) has no .ok(): the test fails loudly here
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 12

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def no_server_error(case: schemathesis.Case[Any]) -> None:
            for headers in (auth, None):
                response = case.call(headers=headers)
                assert response.status_code < 500, (case.method, case.path, response.text[:300])

        no_server_error()
