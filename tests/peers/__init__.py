"""Process managers for real peers (Orthanc, DCMTK dcmqrscp, Redis) for tests and benchmarks."""

from tests.peers.binaries import find_binary, is_ci, require_binary, skip_or_fail
from tests.peers.dcmqrscp import MAX_STUDIES_PER_AE, DcmqrscpServer, dcmtk_environment
from tests.peers.endpoint import PacsEndpoint
from tests.peers.orthanc import OrthancServer, dataset_to_part10, find_dicomweb_plugin
from tests.peers.ports import free_port, port_accepts, wait_for_port
from tests.peers.redis_server import RedisServer

__all__ = [
    "MAX_STUDIES_PER_AE",
    "DcmqrscpServer",
    "OrthancServer",
    "PacsEndpoint",
    "RedisServer",
    "dataset_to_part10",
    "dcmtk_environment",
    "find_binary",
    "find_dicomweb_plugin",
    "free_port",
    "is_ci",
    "port_accepts",
    "require_binary",
    "skip_or_fail",
    "wait_for_port",
]
