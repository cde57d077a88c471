"""What a new user of `dicomweb-gateway` meets first (issue #10 item 12): help that lists every
command and option, configuration errors as one line naming the setting, and a busy port
reported before the demo prints its examples, with a --port hint."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from app import cli


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.upper().startswith("DWG_"):
            monkeypatch.delenv(name)
    yield monkeypatch


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys)
    for command in ("serve", "demo", "echo", "cache"):
        assert command in text.split("positional arguments")[0], command
        assert command in text.split("positional arguments")[1], command


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_host_and_port_have_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    text = " ".join(_help(capsys, command).split())
    assert "--host HOST address to listen on" in text and "default: 127.0.0.1" in text
    assert "--port PORT TCP port to listen on" in text and "default: 8080" in text


def test_cache_help_mentions_the_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert "DWG_ADMIN_TOKEN" in " ".join(_help(capsys, "cache").split())


@pytest.mark.parametrize("port", ["0", "65536", "http", "²", "9" * 5000])
def test_bad_port_is_a_usage_error(capsys: pytest.CaptureFixture[str], port: str) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["demo", "--port", port])
    assert done.value.code == 2
    assert "not a port number" in capsys.readouterr().err


def test_unparsable_pacs_is_one_message(clean_env: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("DWG_PACS", "not json")
    assert cli.main(["echo"]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "DWG_PACS is not valid JSON" in captured.err
    assert len(captured.err.strip().splitlines()) <= 3


def test_demo_on_a_busy_port_says_so_before_anything(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["demo", "--port", str(port)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no "DICOMweb root", no examples
    assert f"127.0.0.1:{port}" in captured.err and "--port" in captured.err
    assert "Traceback" not in captured.err


def test_serve_on_a_busy_port_says_so(clean_env: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("DWG_PACS", '[{"name": "main", "ae_title": "PACS", "port": 104}]')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 2
    assert "--port" in capsys.readouterr().err


def test_unknown_host_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--host", "no-such-host.invalid", "--port", "8080"]) == 2
    assert "--host" in capsys.readouterr().err
