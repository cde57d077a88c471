"""Run a real DCMTK dcmqrscp archive on a free loopback port for tests and benchmarks."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pydicom import Dataset

from tests.peers.binaries import find_binary
from tests.peers.ports import free_port, wait_for_port
from tests.peers.process import ManagedProcess, OneProcessServer

# dcmqrscp's index holds at most 500 studies per AE title (a compile-time limit in DCMTK);
# storing more silently evicts the oldest study.
MAX_STUDIES_PER_AE = 500
_MAX_BYTES_PER_STUDY = "1024mb"
_INDEX_BATCH = 200


def dcmtk_environment() -> dict[str, str]:
    """Environment for DCMTK processes: ``TCP_NODELAY=1`` because Debian's DCMTK leaves Nagle on."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


class DcmqrscpServer(OneProcessServer):
    """A private dcmqrscp: one storage area per AE title, C-MOVE destinations in its HostTable.

    dcmqrscp forks a child per association; ``stop()`` signals the parent's whole process group.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        *,
        ae_titles: Sequence[str] = ("DCMQRSCP",),
        move_destinations: Mapping[str, tuple[str, int]] | None = None,
        max_pdu: int = 131072,
    ) -> None:
        if not ae_titles:
            raise ValueError("dcmqrscp needs at least one AE title")
        self.workdir = Path(workdir)
        self.ae_titles = tuple(ae_titles)
        self.move_destinations = dict(move_destinations or {})
        self.max_pdu = max_pdu
        self.port = free_port()
        self._studies: dict[str, set[str]] = {ae: set() for ae in self.ae_titles}
        self._process: ManagedProcess | None = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        for ae_title in self.ae_titles:
            self.storage_dir(ae_title).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())

    @property
    def ae_title(self) -> str:
        """The first (default) AE title."""
        return self.ae_titles[0]

    @property
    def config_path(self) -> Path:
        """The configuration file written at construction."""
        return self.workdir / "dcmqrscp.cfg"

    @property
    def log_path(self) -> Path:
        """dcmqrscp's combined stdout and stderr."""
        return self.workdir / "dcmqrscp.log"

    def storage_dir(self, ae_title: str) -> Path:
        """The storage area (and index) of one AE title."""
        return self.workdir / "storage" / ae_title

    def config_text(self) -> str:
        """The dcmqrscp configuration: port, PDU, HostTable of move destinations, AETable."""
        hosts = [
            f"{name} = ({ae_title}, 127.0.0.1, {port})"
            for name, (ae_title, port) in self.move_destinations.items()
        ]
        aes = [
            f"{ae_title}  {self.storage_dir(ae_title)}  RW  "
            f"({MAX_STUDIES_PER_AE}, {_MAX_BYTES_PER_STUDY})  ANY"
            for ae_title in self.ae_titles
        ]
        return "\n".join(
            [
                f"NetworkTCPPort  = {self.port}",
                f"MaxPDUSize      = {self.max_pdu}",
                "MaxAssociations = 16",
                "",
                "HostTable BEGIN",
                *hosts,
                "HostTable END",
                "",
                "VendorTable BEGIN",
                "VendorTable END",
                "",
                "AETable BEGIN",
                *aes,
                "AETable END",
                "",
            ]
        )

    def load(self, datasets: Iterable[Dataset], ae_title: str | None = None) -> int:
        """Store datasets as Part-10 files under one AE title and index them with dcmqridx.

        Stops the server while indexing and restarts it if it was running. Refuses (before
        writing anything) a load that would exceed 500 studies for the AE title.
        """
        ae_title = ae_title or self.ae_title
        if ae_title not in self._studies:
            raise ValueError(f"unknown AE title {ae_title!r}; configured: {self.ae_titles}")
        datasets = list(datasets)
        studies = self._studies[ae_title] | {str(ds.StudyInstanceUID) for ds in datasets}
        if len(studies) > MAX_STUDIES_PER_AE:
            raise ValueError(
                f"dcmqrscp keeps at most {MAX_STUDIES_PER_AE} studies per AE title; loading "
                f"would make {len(studies)} under {ae_title!r}: use several AE titles or Orthanc"
            )
        dcmqridx = find_binary("dcmqridx")
        if dcmqridx is None:
            raise RuntimeError("dcmqridx is not installed (run scripts/install-deps)")
        was_running = self.running()
        self.stop()
        directory = self.storage_dir(ae_title)
        files: list[str] = []
        for dataset in datasets:
            path = directory / f"{dataset.SOPInstanceUID}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            files.append(str(path))
        for start in range(0, len(files), _INDEX_BATCH):
            result = subprocess.run(
                [dcmqridx, str(directory), *files[start : start + _INDEX_BATCH]],
                capture_output=True,
                text=True,
                env=dcmtk_environment(),
                timeout=120,
            )
            if result.returncode != 0:
                raise RuntimeError(f"dcmqridx failed ({result.returncode}): {result.stderr}")
        self._studies[ae_title] = studies
        if was_running:
            self.start()
        return len(files)

    def start(self, timeout: float = 15.0) -> None:
        """Start dcmqrscp on the configured port and wait until it accepts connections."""
        binary = find_binary("dcmqrscp")
        if binary is None:
            raise RuntimeError("dcmqrscp is not installed (run scripts/install-deps)")
        self._process = ManagedProcess(
            [binary, "--config", str(self.config_path), "--disable-host-lookup"],
            self.log_path,
            env=dcmtk_environment(),
            cwd=self.workdir,
            own_group=True,
        )
        popen = self._process.start()
        try:
            wait_for_port(self.host, self.port, timeout, process=popen)
        except (TimeoutError, RuntimeError) as error:
            tail = self._process.log_tail()
            self.stop()
            raise RuntimeError(f"dcmqrscp did not start on port {self.port}:\n{tail}") from error
