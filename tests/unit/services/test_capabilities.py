"""PeerCapabilities: a C-GET refusal is remembered for the peer's capability_ttl and then
forgotten, so a reconfigured PACS is asked again; learning is counted, and logged once."""

from __future__ import annotations

import logging

import pytest

from app.metrics import Metrics
from app.services.capabilities import PeerCapabilities
from app.settings import PacsPeer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def capabilities(clock: Clock, metrics: Metrics) -> PeerCapabilities:
    return PeerCapabilities(PacsPeer(name="pacs", ae_title="PACS", capability_ttl=60),
                            metrics, clock=clock)


def test_a_refusal_is_remembered_for_capability_ttl_then_forgotten() -> None:
    clock, metrics = Clock(), Metrics()
    caps = capabilities(clock, metrics)
    assert not caps.get_refused and caps.get_refusal_reason is None
    caps.learn_get_refused("no GET context")
    assert caps.get_refused and caps.get_refusal_reason == "no GET context"
    clock.now += 59.9
    assert caps.get_refused
    clock.now += 0.1
    assert not caps.get_refused and caps.get_refusal_reason is None
    assert metrics.value("dimse_capability_learned_total", peer="pacs", capability="c-get",
                         value="refused") == 1


def test_refusal_is_logged_once_while_known_and_again_after_expiry(
        caplog: pytest.LogCaptureFixture) -> None:
    clock, metrics = Clock(), Metrics()
    caps = capabilities(clock, metrics)
    with caplog.at_level(logging.WARNING, "app.services.capabilities"):
        caps.learn_get_refused("a")
        clock.now += 30
        caps.learn_get_refused("b")  # still known: counted, not logged again
        assert caps.get_refusal_reason == "b"
        clock.now += 60
        caps.learn_get_refused("c")  # the first had expired: logged again
    assert [r.getMessage().split(" (")[1].split(")")[0] for r in caplog.records] == ["a", "c"]
    assert metrics.value("dimse_capability_learned_total") == 3


def test_a_delivering_c_get_clears_a_refusal(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    caps = capabilities(clock, Metrics())
    caps.learn_get_refused("status C000")
    with caplog.at_level(logging.INFO, "app.services.capabilities"):
        caps.learn_get_accepted()
    assert not caps.get_refused
    assert "accepts C-GET again" in caplog.text

