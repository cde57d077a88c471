"""Shared pytest configuration: real-peer fixtures (Orthanc, dcmqrscp) available to every suite,
and an exit watchdog so that a thread left blocked by a test can never turn a run into a hang."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading

import pytest

pytest_plugins = ["tests.peers.fixtures", "tests.peers.compressed_fixtures"]

# After the session, the interpreter joins every non-daemon thread before it exits; one stuck
# in a blocking call (e.g. a DIMSE worker whose consumer a timed-out test killed) would hang the
# run until CI's own limit. This long after the session the watchdog prints every thread's stack
# and exits with the session's status.
EXIT_GRACE_S = 60.0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remember the session's status for the exit watchdog."""
    session.config.stash[_STATUS] = int(exitstatus)


_STATUS = pytest.StashKey[int]()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Start the exit watchdog (a daemon thread: it never keeps a clean exit waiting)."""
    status = config.stash.get(_STATUS, 1)

    def expire() -> None:
        sys.stderr.write(
            f"\ntests/conftest.py: the process had not exited {EXIT_GRACE_S:.0f} s after the "
            "session; threads still alive (a test left one blocked):\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(status)

    timer = threading.Timer(EXIT_GRACE_S, expire)
    timer.daemon = True
    timer.start()
