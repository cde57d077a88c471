"""Locate peer executables and decide whether a missing one skips or fails a test run."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

# Debian installs Orthanc in /usr/sbin, which is not on the PATH of ordinary users.
_SYSTEM_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def is_ci() -> bool:
    """Tell whether we run in CI: the ``CI`` variable is set and is not "false" or "0"."""
    value = os.environ.get("CI")
    return value is not None and value.strip().lower() not in ("false", "0")


def find_binary(name: str) -> str | None:
    """Return the path of executable ``name`` on PATH or in the system sbin directories."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SYSTEM_DIRS])
    return shutil.which(name, path=search)


def skip_or_fail(message: str) -> NoReturn:
    """Stop the current test for a missing prerequisite: a failure in CI, a skip elsewhere."""
    import pytest  # imported here so benchmarks can use this package without pytest

    if is_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_binary(name: str) -> str:
    """Return the path of ``name``; if absent, fail the test in CI and skip it elsewhere."""
    path = find_binary(name)
    if path is None:
        skip_or_fail(f"{name!r} is not installed (run scripts/install-deps)")
    return path
