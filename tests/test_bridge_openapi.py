"""schemathesis against /openapi.json: every operation, generated inputs (valid and invalid), all default
checks: no 5xx, status codes, media types, headers and bodies as documented, bad input refused, auth
not ignored. Each call carries a fresh token (tokens are single-use). The API has a real Redis behind
it; jobs it accepts just queue.

The inputs are derandomized: every run sends the same requests (until hypothesis, schemathesis or this file
changes), so a failure is the API's, reproducible by running the test again, never a roll of the dice.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from bridge.app import create_app
from bridge.auth import SCOPES, mint_token
from bridge.keys import KeyStore
from engine import EngineSettings
from tests.bridge_fixtures import AUD, ISS, RedisServer, make_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, storage: Path) -> tuple[object, str]:
    root = tmp_path_factory.mktemp("bridge")
    bridge_settings = make_settings(root, redis_server.url, max_content_length=1 << 20)
    engine_settings = EngineSettings(_env_file=None, storage_root=storage)  # type: ignore[call-arg]
    app = create_app(bridge_settings, engine_settings=engine_settings)
    return app, KeyStore(bridge_settings.keys_path).create()


CONFIG = SchemathesisConfig.from_str("""
[checks.positive_data_acceptance]
# 422 is how a schema-valid request that names an unknown avatar or a refused URL is answered.
expected-statuses = ["2xx", "401", "403", "404", "409", "422", "503"]
""")


def _operations(app: object) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=CONFIG)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_matches_its_openapi_document(api: tuple[object, str], mode: GenerationMode) -> None:
    app, api_key = api
    operations = _operations(app)
    assert len(operations) >= 12
    tested = 0

    for operation in operations:
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)
        def check(case: schemathesis.Case) -> None:
            token = mint_token(api_key, "schemathesis", sorted(SCOPES), AUD, ISS)
            case.call_and_validate(headers={"Authorization": f"Bearer {token}"})

        try:
            check()
        except Unsatisfiable:  # negative mode only: an operation without inputs has nothing to make invalid
            assert mode is GenerationMode.NEGATIVE
            continue
        tested += 1
    assert tested >= (len(operations) if mode is GenerationMode.POSITIVE else 8), tested
