"""OHIF's study-list query through the gateway in front of DCMTK dcmqrscp, which leaves the
counts and ModalitiesInStudy empty so the gateway computes them: wall time and C-FINDs.

Run from the repository root (prints a markdown table; the numbers go to docs/benchmarks.md):

    .venv/bin/python -m benchmarks.qido_study_list [--studies 101] [--repeat 7] [--batch N ...]

dcmqrscp runs twice: as Debian ships it (Nagle on: ~45 ms stall per DIMSE exchange) and with
TCP_NODELAY=1 in its environment. ``--batch`` values are ``max_uids_per_query`` settings
(1 = one study at a time, the pre-batching path); omit it to run the app's default only
(for measuring an older checkout whose settings lack it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from app.demo.samples import generate_many_studies, generate_sample_studies
from app.dimse.client import PeerClient
from tests.peers import dcmqrscp as dcmqrscp_module
from tests.peers.dcmqrscp import DcmqrscpServer
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

OHIF_STUDY_LIST = {"limit": "101", "offset": "0", "fuzzymatching": "false",
                   "includefield": "00081030,00080060"}
_finds: Counter[str] = Counter()


def _count_finds() -> None:
    """Count the gateway's C-FINDs by level (wraps PeerClient.find in this process)."""
    original = PeerClient.find

    def counted(self: PeerClient, identifier: Any, **kwargs: Any) -> Any:
        _finds[str(identifier.QueryRetrieveLevel)] += 1
        return original(self, identifier, **kwargs)

    PeerClient.find = counted  # type: ignore[method-assign]


def _measure(server: DcmqrscpServer, repeat: int, batch: int | None) -> dict[str, Any]:
    extra = {} if batch is None else {"max_uids_per_query": batch}
    peer = peer_settings("dcmqrscp", server.ae_title, server.host, server.port, **extra)
    times: list[float] = []
    finds: list[Counter[str]] = []
    with GatewayServer(gateway_settings(peer, cache_backend="none")) as gateway:
        with gateway.client() as http:
            http.get("/studies", params={"limit": "1"})  # warm-up (relational probe, imports)
            for _ in range(repeat):
                _finds.clear()
                start = time.perf_counter()
                response = http.get("/studies", params=OHIF_STUDY_LIST)
                times.append(time.perf_counter() - start)
                finds.append(Counter(_finds))
                assert response.status_code == 200, response.text
                results = len(response.json())
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "finds": finds[-1], "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=101, help="one-instance studies added")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--batch", type=int, action="append", help="max_uids_per_query values")
    args = parser.parse_args()
    _count_finds()
    data = generate_sample_studies() + generate_many_studies(args.studies, seed=11)
    studies = len({str(d.StudyInstanceUID) for d in data})
    print(f"{studies} studies, {len(data)} instances in dcmqrscp; "
          f"OHIF study list: /studies?{'&'.join(f'{k}={v}' for k, v in OHIF_STUDY_LIST.items())}")
    print()
    print("| dcmqrscp | max_uids_per_query | results | C-FINDs (STUDY/SERIES/IMAGE) "
          "| median | min | max |")
    print("|---|---|---|---|---|---|---|")
    for nagle in (True, False):
        # As Debian ships it (no TCP_NODELAY in dcmqrscp's environment), then tuned.
        env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
        if not nagle:
            env["TCP_NODELAY"] = "1"
        dcmqrscp_module.dcmtk_environment = env.copy  # type: ignore[assignment]
        with tempfile.TemporaryDirectory() as work:
            server = DcmqrscpServer(Path(work))
            server.load(data)
            server.start()
            try:
                for batch in args.batch or [None]:
                    r = _measure(server, args.repeat, batch)
                    f = r["finds"]
                    print(f"| {'Nagle on (Debian default)' if nagle else 'TCP_NODELAY=1'} "
                          f"| {'default' if batch is None else batch} | {r['results']} "
                          f"| {sum(f.values())} ({f['STUDY']}/{f['SERIES']}/{f['IMAGE']}) "
                          f"| {r['median'] * 1000:.0f} ms | {r['min'] * 1000:.0f} ms "
                          f"| {r['max'] * 1000:.0f} ms |", flush=True)
            finally:
                server.stop()


if __name__ == "__main__":
    main()
