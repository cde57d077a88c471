"""A bounded schemathesis run over the published contract (issue #10 item 11): the gateway,
in this process in front of the demo PACS, answers every generated request with a status, a
content type and a body its OpenAPI document declares, and never with a 5xx.

Each operation gets schema-valid (positive) and schema-violating (negative) requests from
schemathesis' strategies, run by hypothesis derandomised (a fixed seed) and bounded (a few
examples per operation and mode), so the run is short and finds the same things every time.
(schemathesis' own pytest decorators do not run under this pytest; its strategies and checks
are used directly.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.demo.pacs import DemoPacs
from app.main import create_app
from app.settings import PacsPeer, Settings
from tests.support.gateway_server import GatewayServer

from .conftest import gateway_settings, peer_config

pytestmark = pytest.mark.timeout(300)
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 15}
CHECKS = {
    GenerationMode.POSITIVE: [not_a_server_error, status_code_conformance,
                              content_type_conformance, response_headers_conformance,
                              response_schema_conformance],
    GenerationMode.NEGATIVE: [not_a_server_error, status_code_conformance,
                              content_type_conformance, response_schema_conformance,
                              negative_data_rejection],
}
# The contract of a gateway like the one served below (the document does not depend on the
# PACS's address, only on the routes), read once at collection to list the operations.
_DOCUMENT = create_app(Settings(pacs=[PacsPeer(name="demo", ae_title="DEMO_PACS")],
                                storage_scp_enabled=False)).openapi()
SCHEMA = schemathesis.openapi.from_dict(_DOCUMENT)
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}


def _has_parameters(label: str) -> bool:
    method, path = label.split(" ", 1)
    return bool(_DOCUMENT["paths"][path][method.lower()].get("parameters"))


# Negative requests need something to violate: operations without parameters have none.
RUNS = [(label, mode) for label in sorted(OPERATIONS) for mode in EXAMPLES
        if mode is GenerationMode.POSITIVE or _has_parameters(label)]


@pytest.fixture(scope="module")
def served(sample_pacs: DemoPacs) -> Iterator[GatewayServer]:
    """The gateway under uvicorn (a thread of this process) in front of the demo PACS."""
    with GatewayServer(gateway_settings(peer_config(sample_pacs.port))) as server:
        assert server.app.openapi() == _DOCUMENT
        yield server


@pytest.mark.parametrize(("label", "mode"), RUNS,
                         ids=[f"{label}-{mode.value}" for label, mode in RUNS])
def test_contract(served: GatewayServer, label: str, mode: GenerationMode) -> None:
    operation = OPERATIONS[label]

    @settings(max_examples=EXAMPLES[mode], derandomize=True, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        case.call_and_validate(base_url=served.url, checks=CHECKS[mode], timeout=30)

    run()
