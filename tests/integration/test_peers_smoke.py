"""Smoke tests of the real peers, so gateway failures are never blamed on the fixtures."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pydicom import Dataset

from tests.peers import (
    DcmqrscpServer,
    OrthancServer,
    PacsEndpoint,
    RedisServer,
    port_accepts,
    require_binary,
)
from tests.peers.scu import c_echo, c_find_study_root

_JAPANESE_CHARSET = ["", "ISO 2022 IR 87"]


def _study_query(**keys: object) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    identifier.PatientName = ""
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return identifier


def _japanese_sample(datasets: list[Dataset]) -> Dataset:
    for dataset in datasets:
        if "ISO 2022 IR 87" in dataset.get("SpecificCharacterSet", []):
            return dataset
    raise AssertionError("the sample studies contain no ISO 2022 IR 87 (Japanese) patient")


def test_c_echo(pacs: PacsEndpoint) -> None:
    assert c_echo(pacs) == 0x0000


def test_study_level_find_returns_every_sample_study(
    pacs: PacsEndpoint, sample_datasets: list[Dataset]
) -> None:
    expected = {str(ds.StudyInstanceUID): str(ds.PatientName) for ds in sample_datasets}

    matches = c_find_study_root(pacs, _study_query())

    found = {str(match.StudyInstanceUID): str(match.PatientName) for match in matches}
    assert found == expected


def test_japanese_name_in_its_own_character_set_matches_and_decodes(
    pacs: PacsEndpoint, sample_datasets: list[Dataset]
) -> None:
    sample = _japanese_sample(sample_datasets)
    name = str(sample.PatientName)
    query = _study_query(SpecificCharacterSet=_JAPANESE_CHARSET, PatientName=name)

    matches = c_find_study_root(pacs, query)

    assert [str(m.StudyInstanceUID) for m in matches] == [str(sample.StudyInstanceUID)]
    assert str(matches[0].PatientName) == name


def test_japanese_name_queried_in_utf8(pacs: PacsEndpoint, sample_datasets: list[Dataset]) -> None:
    """Orthanc matches across character sets; Debian's dcmqrscp cannot.

    Debian builds DCMTK 3.6.7 on glibc iconv, which has no ISO 2022 IR 87 (its log says
    "'ISO 2022 IR 87' is not supported by the utilized character set conversion library"), so
    dcmqrscp compares the raw bytes of the UTF-8 query with the ISO 2022 stored value: no match.
    """
    sample = _japanese_sample(sample_datasets)
    name = str(sample.PatientName)
    query = _study_query(SpecificCharacterSet="ISO_IR 192", PatientName=name)

    matches = c_find_study_root(pacs, query)

    if pacs.kind == "dcmqrscp":
        assert matches == []
    else:
        assert [str(m.StudyInstanceUID) for m in matches] == [str(sample.StudyInstanceUID)]
        assert str(matches[0].PatientName) == name


def test_concurrent_associations_each_get_every_study(
    pacs: PacsEndpoint, sample_datasets: list[Dataset]
) -> None:
    """The gateway pools associations, so each peer must serve several at once."""
    expected = {str(ds.StudyInstanceUID) for ds in sample_datasets}

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: c_find_study_root(pacs, _study_query()), range(4)))

    assert [{str(m.StudyInstanceUID) for m in matches} for matches in results] == [expected] * 4


def test_orthanc_dicomweb_search_for_studies(
    orthanc: OrthancServer, sample_datasets: list[Dataset]
) -> None:
    response = httpx.get(
        f"{orthanc.dicomweb_url}/studies",
        headers={"Accept": "application/dicom+json"},
        timeout=10.0,
    )

    assert response.status_code == 200
    study_uids = {study["0020000D"]["Value"][0] for study in response.json()}
    assert study_uids == {str(ds.StudyInstanceUID) for ds in sample_datasets}


def test_orthanc_holds_every_sample_instance(
    orthanc: OrthancServer, sample_datasets: list[Dataset]
) -> None:
    assert orthanc.instance_count() == len(sample_datasets)


def test_dcmqrscp_refuses_more_than_500_studies_per_ae_title(tmp_path: Path) -> None:
    server = DcmqrscpServer(tmp_path)
    datasets = []
    for number in range(501):
        dataset = Dataset()
        dataset.StudyInstanceUID = f"1.2.826.0.1.3680043.10.543.{number + 1}"
        datasets.append(dataset)

    with pytest.raises(ValueError, match="at most 500 studies"):
        server.load(datasets)

    assert list(server.storage_dir(server.ae_title).iterdir()) == []


def test_dcmqrscp_load_while_running_restarts_on_the_same_port(
    tmp_path: Path, sample_datasets: list[Dataset]
) -> None:
    require_binary("dcmqrscp")
    first, second = sample_datasets[0], sample_datasets[-1]
    assert first.StudyInstanceUID != second.StudyInstanceUID
    with DcmqrscpServer(tmp_path, ae_titles=("ONE",)) as server:
        endpoint = PacsEndpoint("dcmqrscp", "ONE", server.host, server.port)
        server.load([first])
        server.load([second])

        matches = c_find_study_root(endpoint, _study_query())

        assert server.running()
        assert {str(m.StudyInstanceUID) for m in matches} == {
            str(first.StudyInstanceUID),
            str(second.StudyInstanceUID),
        }


def test_throwaway_redis_server_answers_and_keeps_nothing(tmp_path: Path) -> None:
    require_binary("redis-server")
    import redis

    with RedisServer(tmp_path) as server:
        client = redis.Redis.from_url(server.url, socket_timeout=5)
        assert client.ping() is True
        assert client.config_get("save") == {"save": ""}
        client.close()

    assert not port_accepts(server.host, server.port)
