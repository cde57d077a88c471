"""Run a real Orthanc (with its DICOMweb plugin) on free loopback ports for tests and benchmarks."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
from pydicom import Dataset

from tests.peers.binaries import find_binary
from tests.peers.ports import free_port
from tests.peers.process import ManagedProcess, OneProcessServer

_DICOMWEB_PACKAGE = "orthanc-dicomweb"
_PLUGIN_ENV = "ORTHANC_DICOMWEB_PLUGIN"


def find_dicomweb_plugin() -> str | None:
    """Return the DICOMweb plugin library, from ``$ORTHANC_DICOMWEB_PLUGIN`` or the Debian package.

    The path is read from ``dpkg -L orthanc-dicomweb`` rather than guessed.
    """
    override = os.environ.get(_PLUGIN_ENV)
    if override:
        return override
    try:
        listing = subprocess.run(
            ["dpkg", "-L", _DICOMWEB_PACKAGE],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    candidates = [
        line.strip()
        for line in listing.splitlines()
        if "DicomWeb" in os.path.basename(line) and ".so" in os.path.basename(line)
    ]
    existing = [path for path in candidates if os.path.isfile(path)]
    # Prefer the unversioned name in the plugin folder over the versioned library file.
    existing.sort(key=lambda path: (not path.endswith(".so"), len(path)))
    return existing[0] if existing else None


def dataset_to_part10(dataset: Dataset) -> bytes:
    """Encode ``dataset`` as DICOM Part-10 file bytes (preamble, DICM, File Meta Information)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class OrthancServer(OneProcessServer):
    """A private Orthanc process: own storage, own config, DICOM and HTTP on free ports.

    Orthanc listens on all addresses of its ports (it has no bind option); HTTP stays local
    through ``RemoteAccessAllowed: false`` and clients talk to 127.0.0.1.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        *,
        ae_title: str = "ORTHANC",
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        extra_config: Mapping[str, object] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.ae_title = ae_title
        self.modalities = dict(modalities or {})
        self.extra_config = dict(extra_config or {})
        self.dicom_port = 0
        self.http_port = 0
        self._process: ManagedProcess | None = None

    @property
    def rest_url(self) -> str:
        """Base URL of Orthanc's REST API."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Base URL of Orthanc's own DICOMweb service (the plugin), without trailing slash."""
        return f"{self.rest_url}/dicom-web"

    @property
    def config_path(self) -> Path:
        """Where ``start()`` writes the configuration."""
        return self.workdir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        """Orthanc's combined stdout and stderr."""
        return self.workdir / "orthanc.log"

    def config(self) -> dict[str, Any]:
        """The configuration ``start()`` writes; ``extra_config`` overrides any key."""
        plugin = find_dicomweb_plugin()
        if plugin is None:
            raise RuntimeError(f"Orthanc DICOMweb plugin not found (install {_DICOMWEB_PACKAGE})")
        config: dict[str, Any] = {
            "Name": f"test-{self.ae_title}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "DicomModalities": {
                name: [ae, host, port] for name, (ae, host, port) in self.modalities.items()
            },
            # Orthanc answers C-FIND in DefaultEncoding; Debian's Latin1 turns Japanese and
            # Chinese names into "^" (observed on 1.10.1), so answer in UTF-8 unless overridden.
            "DefaultEncoding": "Utf8",
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "SaveJobs": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        config.update(self.extra_config)
        return config

    def start(self, timeout: float = 30.0) -> None:
        """Write the config, start ``Orthanc`` and wait until ``/system`` answers."""
        binary = find_binary("Orthanc")
        if binary is None:
            raise RuntimeError("Orthanc is not installed (run scripts/install-deps)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.dicom_port:
            self.dicom_port = free_port()
        if not self.http_port:
            self.http_port = free_port()
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        self._process = ManagedProcess(
            [binary, str(self.config_path)], self.log_path, cwd=self.workdir
        )
        popen = self._process.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.rest_url}/system", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if popen.poll() is not None or time.monotonic() >= deadline:
                tail = self._process.log_tail()
                self.stop()
                raise RuntimeError(f"Orthanc did not start on {self.rest_url}:\n{tail}")
            time.sleep(0.1)

    def client(self, timeout: float = 30.0) -> httpx.Client:
        """An HTTP client on the REST API; the caller closes it."""
        return httpx.Client(base_url=self.rest_url, timeout=timeout)

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        """Declare a DICOM peer (e.g. a C-MOVE destination) through ``PUT /modalities/{name}``."""
        with self.client() as client:
            response = client.put(
                f"/modalities/{name}", json={"AET": ae_title, "Host": host, "Port": port}
            )
            response.raise_for_status()

    def load(self, datasets: Iterable[Dataset]) -> int:
        """Upload each dataset as Part-10 bytes with ``POST /instances``; return how many."""
        count = 0
        with self.client() as client:
            for dataset in datasets:
                response = client.post(
                    "/instances",
                    content=dataset_to_part10(dataset),
                    headers={"Content-Type": "application/dicom"},
                )
                response.raise_for_status()
                count += 1
        return count

    def instance_count(self) -> int:
        """Number of instances stored, from ``GET /statistics``."""
        with self.client() as client:
            response = client.get("/statistics")
            response.raise_for_status()
            return int(response.json()["CountInstances"])
