"""Waiting for an association slot is bounded: with every slot busy past
``association_wait_timeout`` the request is answered 503 with Retry-After (not a hang, not a
504), and /metrics shows the pool in use, the wait that timed out, the DIMSE operation's
duration by status and the HTTP request by route template and status."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset

from app.demo.pacs import DemoPacs
from tests.component.conftest import gateway_settings, open_app, peer_config

ACCEPT = {"Accept": 'multipart/related; type="application/dicom"'}


@pytest.fixture
def slow_pacs(samples: list[Dataset]) -> Iterator[DemoPacs]:
    """The samples, 0.15 s per sub-operation: a 10-instance C-GET holds its association ~1.5 s."""
    with DemoPacs(samples, ae_title="SLOW_PACS", response_delay=0.15) as pacs:
        yield pacs


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample whose labels include ``labels`` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_a_request_finding_every_slot_busy_gets_503_with_retry_after(
        slow_pacs: DemoPacs, samples: list[Dataset]) -> None:
    by_series: dict[str, list[Dataset]] = {}
    for ds in samples:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    series = max(by_series.values(), key=len)
    first = series[0]
    settings = gateway_settings(
        peer_config(slow_pacs.port, "SLOW_PACS", max_associations=1,
                    association_wait_timeout=0.5, overall_timeout=20, dimse_timeout=10),
        cache_backend="none")
    path = f"/dicomweb/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
    async with open_app(settings) as (client, _services):
        retrieval = asyncio.create_task(client.get(path, headers=ACCEPT))
        for _ in range(200):  # until the C-GET holds the one association
            if slow_pacs.operation_counts["C-GET"]:
                break
            await asyncio.sleep(0.01)
        during = (await client.get("/metrics")).text
        search = await client.get("/dicomweb/studies")
        retrieved = await retrieval
        after = (await client.get("/metrics")).text

    assert search.status_code == 503, search.text
    assert search.headers["Retry-After"] == "5"
    assert "max_associations" in search.text and "stayed busy" in search.text
    assert retrieved.status_code == 200 and len(retrieved.content) > 0

    assert _sample(during, "dimse_associations_in_use", peer="demo") == 1
    assert _sample(during, "dimse_associations_open", peer="demo") == 1
    assert _sample(after, "dimse_association_wait_timeouts_total", peer="demo") == 1
    assert _sample(after, "dimse_operation_duration_seconds_count", peer="demo",
                   operation="C-GET", status="0x0000") == 1
    assert _sample(after, "http_request_duration_seconds_count", route="/dicomweb/studies",
                   method="GET", status="503") == 1
    route = "/dicomweb/studies/{study}/series/{series}"
    assert _sample(after, "http_request_duration_seconds_count", route=route, method="GET",
                   status="200") == 1
    sent = _sample(after, "http_response_bytes_total", route=route, method="GET")
    assert sent == len(retrieved.content)
    assert re.search(r'^dimse_associations_waiting\{peer="demo"\} 0\.0$', after, re.M)
