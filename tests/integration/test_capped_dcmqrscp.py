"""Issue #12 item 2 with DCMTK dcmqrscp's own matching: dcmqrscp has no result cap, so its C-FIND
answers are cut here at five matches and reported capped (as Orthanc's LimitFindResults ends
them, see test_capped_archive.py); everything else is real: the StudyDate and StudyTime range
sub-queries (open-ended ranges included) are matched by dcmqrscp over a real association."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any

import pytest
from pydicom import Dataset

from app.dicomweb.attributes import QueryLevel
from app.dicomweb.search import parse_search
from app.dimse.client import Client, DimseClients
from app.dimse.find import FindOutcome
from app.metrics import Metrics
from app.services.query import QueryService, SearchResult
from app.settings import load_settings
from tests.peers import DcmqrscpServer, require_binary
from tests.support.dated_studies import HEAVY_DAY, dated_studies

LIMIT = 5


class _CappedStream:
    """A C-FIND stream cut at ``limit`` matches; then the outcome says capped (Cancel FE00,
    not asked for) and the real C-FIND is cancelled by leaving it early."""

    def __init__(self, inner: Any, limit: int) -> None:
        self._inner = inner
        self._limit = limit
        self._result: FindOutcome | None = None

    async def __aenter__(self) -> _CappedStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._inner.__aexit__(et, e, tb)

    def __aiter__(self) -> AsyncIterator[Dataset]:
        return self._matches()

    async def _matches(self) -> AsyncIterator[Dataset]:
        count = 0
        async for ds in self._inner:
            if count == self._limit:
                self._result = FindOutcome(0xFE00, False, count, False, False, capped=True)
                return
            count += 1
            yield ds
        self._result = self._inner.result

    @property
    def result(self) -> FindOutcome:
        assert self._result is not None
        return self._result


class CappingClient:
    """The real client of a PACS, with every C-FIND answer capped at ``limit``."""

    def __init__(self, client: Client, limit: int) -> None:
        self.peer = client.peer
        self._client = client
        self._limit = limit
        self.finds = 0

    async def supports_relational(self) -> bool:
        return False

    def find(self, identifier: Dataset, *, relational: bool = False,
             maxsize: int = 64) -> _CappedStream:
        self.finds += 1
        return _CappedStream(self._client.find(identifier, relational=relational,
                                               maxsize=maxsize), self._limit)


@pytest.fixture(scope="module")
def studies() -> list[Dataset]:
    return dated_studies()


@pytest.fixture(scope="module")
def dated_dcmqrscp(tmp_path_factory: pytest.TempPathFactory,
                   studies: list[Dataset]) -> Iterator[DcmqrscpServer]:
    require_binary("dcmqrscp")
    require_binary("dcmqridx")
    server = DcmqrscpServer(tmp_path_factory.mktemp("dcmqrscp-dated"), ae_titles=("DATED_QR",))
    server.load(studies)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def search(server: DcmqrscpServer, params: list[tuple[str, str]]
                 ) -> tuple[SearchResult, int]:
    """A /studies search through QueryService on the capped dcmqrscp; the result and the
    number of C-FINDs it took."""
    settings = load_settings(ae_title="DWGW_TEST", storage_scp_enabled=False, pacs=[{
        "name": "dated", "ae_title": server.ae_title, "host": server.host,
        "port": server.port}])
    clients = DimseClients(settings)
    await clients.start()
    try:
        client = CappingClient(clients.get("dated"), LIMIT)
        service = QueryService(client, metrics=Metrics())  # type: ignore[arg-type]
        query = parse_search(params, level=QueryLevel.STUDY)
        return await service.search(query, "http://gw.test/dicomweb"), client.finds
    finally:
        await clients.aclose()


def uids(result: SearchResult) -> list[str]:
    return [str(ds.StudyInstanceUID) for ds in result.datasets]


def uids_of(studies: list[Dataset], keep: Any) -> set[str]:
    return {str(ds.StudyInstanceUID) for ds in studies if keep(ds)}


async def test_every_dated_study_is_found_through_date_ranges(
    dated_dcmqrscp: DcmqrscpServer, studies: list[Dataset]
) -> None:
    result, finds = await search(dated_dcmqrscp, [])
    found = uids(result)
    assert len(found) == len(set(found))
    assert uids_of(studies, lambda ds: "StudyDate" in ds) <= set(found)
    assert finds > 2
    assert any("without a StudyDate" in w for w in result.warnings)


async def test_a_capped_range_and_a_capped_day_are_completed(
    dated_dcmqrscp: DcmqrscpServer, studies: list[Dataset]
) -> None:
    ranged, _ = await search(dated_dcmqrscp, [("StudyDate", "20150101-20201231")])
    assert sorted(uids(ranged)) == sorted(uids_of(
        studies, lambda ds: "20150101" <= str(ds.get("StudyDate", "")) <= "20201231"))
    assert ranged.warnings == []
    day, _ = await search(dated_dcmqrscp, [("StudyDate", HEAVY_DAY)])
    assert sorted(uids(day)) == sorted(uids_of(studies,
                                               lambda ds: ds.get("StudyDate") == HEAVY_DAY))
