"""schemathesis against the API's own OpenAPI schema, in process, with a real key.

Every operation of the embedded app (SQLite database and broker files, local media, no
worker) gets generated requests, valid and invalid (bounded: MAX_EXAMPLES each, the whole
run well under two minutes on two shared cores). Checked on every response: never a 5xx;
the status code is one the schema declares; a JSON body conforms to the schema declared for
its status; the content type is the declared one. The event streams are left out (an open
stream never ends, by design); they have their own tests. Generated ids name no real scan,
so the routes behind a found scan are reached by the other API tests, not by this one.

Found and fixed by it: `GET /v1/scans?page=<huge>` overflowed SQLite's integer (now bounded,
422), undocumented 400/415 answers of the upload and STOW-RS routes (now in the schema).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.db.migrate import upgrade_to_head
from shared.db.session import sync_session
from shared.db.tenants import issue_key
from tests.support.inprocess import settings_env

MAX_EXAMPLES = 20
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
_state: dict[str, Any] = {}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("schemathesis")
    env = {"database_url": f"sqlite+aiosqlite:///{root / 'db.sqlite'}",
           "broker_url": f"sqla+sqlite:///{root / 'broker.db'}",
           "media_dir": str(root / "media"), "secret_key": "schemathesis-test-" + "k" * 32,
           "max_request_bytes": str(8 << 20), "max_upload_bytes": str(4 << 20)}
    with settings_env(**env):
        upgrade_to_head()
        with sync_session() as session:
            _state["key"] = issue_key(session, "schemathesis").key
        from api.main import create_app

        app = create_app()
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        yield schema.exclude(path_regex=r"/events$")


def _run_operation(operation: Any, key: str) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)

    run()


def test_no_operation_answers_a_server_error(api_schema: Any) -> None:
    """Each operation in turn (schemathesis' pytest loader predates this pytest); every
    failure is collected, with the operation it came from, before the test fails."""
    failures = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        try:
            _run_operation(operation, _state["key"])
        except (Exception, BaseExceptionGroup) as exc:  # the checks' failures, minimised
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_the_run_covered_the_schema(api_schema: Any) -> None:
    """The exclusion left the operations that matter in (a typo would skip everything)."""
    paths = {op.path for op in (r.ok() for r in api_schema.get_all_operations())}
    assert {"/v1/scans", "/v1/batches", "/v1/scans/{scan_id}/report.pdf"} <= paths
    assert not any(p.endswith("/events") for p in paths)
    assert Path(__file__).name == "test_schemathesis.py"
