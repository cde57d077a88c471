"""What a new user of `dicomweb-gateway` meets first (issue #10 item 12): help that lists every
command and option, configuration errors as one line naming the setting, and a busy port
reported before the demo prints its examples, with a --port hint."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import cli
from app.cli import main


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
    for command in ("serve", "demo", "echo", "cache", "prefetch"):
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


@pytest.mark.parametrize(("text", "size"), [
    ("1048576", 1 << 20), ("500M", 500 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29),
    ("10k", 10 << 10), ("1T", 1 << 40), ("3 MB", 3 << 20),
])
def test_prefetch_sizes(text: str, size: int) -> None:
    assert cli._size(text) == size


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("1d", 86400), ("0.5m", 30),
])
def test_prefetch_durations(text: str, seconds: float) -> None:
    assert cli._duration(text) == seconds


@pytest.mark.parametrize("argv", [
    ["--max-bytes", "lots"], ["--max-bytes", "0"], ["--every", "soon"], ["--every", "0"],
    ["--every=-5m"],
])
def test_prefetch_bad_sizes_and_durations_are_usage_errors(
        capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["prefetch", "--url", "http://127.0.0.1:1", "--query", "StudyDate=today",
                  *argv])
    assert done.value.code == 2
    assert "not a" in capsys.readouterr().err


def test_prefetch_help_names_the_budgets(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_help(capsys, "prefetch").split())
    for option in ("--query", "--study", "--max-studies", "--max-bytes", "--concurrency",
                   "--every", "--url"):
        assert option in text
    assert "interactive users" in text


def test_api_key_makes_a_key_and_its_hashed_entry(capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    from app.api.credentials import ApiKeys
    from app.settings import load_settings

    assert cli.main(["api-key", "ai-triage", "--actions", "search,retrieve", "--pacs", "main"]) == 0
    out = capsys.readouterr().out
    key = out.splitlines()[1]
    config = tomllib.loads(out.split("\n\n", 1)[1])
    assert key not in out.split("\n\n", 1)[1]  # the entry holds the hash only
    settings = load_settings(pacs=[{"name": "main", "ae_title": "PACS"}], **config)
    principal = ApiKeys(settings.api_keys).find(key)
    assert principal is not None and principal.subject == "ai-triage"
    assert principal.actions == {"search", "retrieve"} and principal.pacs == {"main"}
    assert ApiKeys(settings.api_keys).find(key[:-1]) is None
    assert cli.main(["api-key", "x", "--actions", "delete"]) == 2
    assert "actions" in capsys.readouterr().err


def test_several_workers_share_a_fresh_metrics_directory_removed_at_exit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli import multiprocess_metrics

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with multiprocess_metrics() as directory:
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(directory)
        assert directory.is_dir() and not any(directory.iterdir())
    assert not directory.exists() and "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_a_configured_metrics_directory_is_emptied_of_an_old_run(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from app.cli import multiprocess_metrics

    (tmp_path / "counter_123.db").write_bytes(b"old samples")
    (tmp_path / "notes.txt").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with multiprocess_metrics() as directory:
        assert directory == tmp_path and not (tmp_path / "counter_123.db").exists()
    assert (tmp_path / "notes.txt").exists()


@pytest.mark.parametrize("workers", ["0", "65", "two"])
def test_bad_worker_counts_are_usage_errors(capsys: pytest.CaptureFixture[str],
                                            workers: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--workers", workers])
    assert exc.value.code == 2 and "number of workers" in capsys.readouterr().err
