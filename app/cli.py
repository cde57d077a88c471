"""`dicomweb-gateway serve | demo | echo | cache | prefetch`: run the DICOMweb gateway in front of a
PACS (or an embedded demo PACS), C-ECHO the configured PACS, inspect and empty the cache, or have
a running gateway prefetch a worklist into its cache."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import ssl
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.settings import ApiKey, ConfigurationError, PacsPeer, Settings, load_settings
from app.tlsfiles import TLS12_CIPHERS, load_ca, server_context


def _listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``, so a busy port is reported before anything else
    (the server then serves on this very socket: nobody can take the port in between)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise ConfigurationError(f"--host: cannot listen on {host!r}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; is another server running "
            "there? Choose another port with --port (e.g. --port 8081)") from None
    return sock


def https_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options for ``settings`` (none when HTTPS is off). The files are loaded
    once here first, so that a wrong path or password stops the start with a message naming
    the setting rather than a traceback from uvicorn."""
    if settings.https_cert_file is None:
        return {}
    password = (settings.https_key_password.get_secret_value()
                if settings.https_key_password else None)
    context = server_context(settings.https_cert_file, settings.https_key_file, password, None,
                             "https")
    options: dict[str, Any] = {"ssl_certfile": settings.https_cert_file,
                               "ssl_keyfile": settings.https_key_file,
                               "ssl_keyfile_password": password,
                               "ssl_ciphers": TLS12_CIPHERS}
    if settings.https_client_ca_file is not None:
        load_ca(context, settings.https_client_ca_file, "https_client_ca_file")
        options.update(ssl_ca_certs=settings.https_client_ca_file,
                       ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def _serve(settings: Settings, sock: socket.socket, tls: dict[str, Any]) -> None:
    import uvicorn

    from app.api.http_protocol import GatewayHttpProtocol
    from app.main import create_server_app

    config = uvicorn.Config(create_server_app(settings), log_level=settings.log_level.lower(),
                            http=GatewayHttpProtocol, **tls)
    uvicorn.Server(config).run(sockets=[sock])


def _check_tls(settings: Settings) -> None:
    """Load every certificate, key and CA file the settings name (DICOM TLS per PACS, the
    Storage SCP's), so that a bad one is reported before the server starts."""
    from app.dimse.tls import client_tls, storage_scp_context

    for peer in settings.pacs:
        client_tls(peer)
    if settings.storage_scp_wanted:
        storage_scp_context(settings)


def _serve_workers(settings: Settings, sock: socket.socket, workers: int,
                   tls: dict[str, Any]) -> None:
    """Run ``workers`` uvicorn worker processes on ``sock``, each building the app from the
    environment, with their metrics summed in a shared PROMETHEUS_MULTIPROC_DIR."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    with multiprocess_metrics():
        config = uvicorn.Config("app.main:create_server_app", factory=True, workers=workers,
                                log_level=settings.log_level.lower(),
                                http="app.api.http_protocol:GatewayHttpProtocol", **tls)
        Multiprocess(config, sockets=[sock]).run()


@contextlib.contextmanager
def multiprocess_metrics() -> Iterator[Path]:
    """The directory where worker processes write their metrics (``PROMETHEUS_MULTIPROC_DIR``):
    the one set in the environment, emptied of a previous run's samples (they would add up),
    or a fresh temporary one, removed when the server stops."""
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="dwg-metrics-") as created:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = created
        try:
            yield Path(created)
        finally:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gateway on the configured PACS."""
    settings = load_settings()
    if not settings.pacs:
        raise ConfigurationError("pacs: no PACS configured; set DWG_PACS or DWG_CONFIG_FILE")
    _check_tls(settings)
    tls = https_options(settings)
    if args.workers > 1:
        _serve_workers(settings, _listen(args.host, args.port), args.workers, tls)
    else:
        _serve(settings, _listen(args.host, args.port), tls)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Start an embedded demo PACS with sample studies and the gateway in front of it."""
    from app.demo.pacs import DemoPacs
    from app.demo.samples import generate_sample_studies

    tls = https_options(load_settings())  # a bad certificate setting fails first
    sock = _listen(args.host, args.port)  # a busy port fails here, before any output
    pacs = DemoPacs(generate_sample_studies(), ae_title="DEMO_PACS")
    pacs_port = pacs.start("127.0.0.1", 0)
    settings = load_settings(
        pacs=[PacsPeer(name="demo", ae_title="DEMO_PACS", host="127.0.0.1", port=pacs_port)],
        cache_backend="memory",
        cors_allow_origins=["*"],
        storage_scp_enabled=False,
    )
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    scheme = "https" if settings.https_enabled else "http"
    root = f"{scheme}://{shown_host}:{args.port}{settings.dicomweb_prefix}"
    print(f"Demo PACS DEMO_PACS listening on 127.0.0.1:{pacs_port} with "
          f"{len(pacs)} sample instances")
    print(f"DICOMweb root: {root}")
    print("Try:")
    print(f"  curl -s '{root}/studies'")
    print(f"  curl -s '{root}/studies?PatientName=Doe*&includefield=StudyDescription'")
    print(f"  curl -s '{root}/series?Modality=CT'")
    ct = next((d for d in pacs.datasets() if d.Modality == "CT"), None)
    if ct is not None:
        series = f"{root}/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
        print(f"  curl -s '{series}/metadata'")
        print(f"  curl -s -o series.multipart '{series}'")
        print(f"  curl -s -H 'Accept: multipart/related; type=\"application/octet-stream\"' "
              f"'{series}/instances/{ct.SOPInstanceUID}/frames/1'")
    sys.stdout.flush()
    try:
        _serve(settings, sock, tls)
    finally:
        pacs.stop()
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    """C-ECHO each configured PACS (or the one named) and report."""
    from app.dimse.client import DimseClients
    from app.errors import GatewayError

    settings = load_settings()
    peers = [settings.peer(args.pacs)] if args.pacs else settings.pacs
    if not peers:
        raise ConfigurationError("pacs: no PACS configured; set DWG_PACS or DWG_CONFIG_FILE")

    async def run() -> int:
        clients = DimseClients(settings)
        failures = 0
        try:
            for peer in peers:
                try:
                    rtt = await clients.get(peer.name).echo()
                    print(f"{peer.name}: {peer.ae_title}@{peer.host}:{peer.port} OK "
                          f"({rtt * 1000:.1f} ms)")
                except GatewayError as exc:
                    failures += 1
                    print(f"{peer.name}: {peer.ae_title}@{peer.host}:{peer.port} FAILED: "
                          f"{exc.detail}")
        finally:
            await clients.aclose()
        return 1 if failures else 0

    return asyncio.run(run())


def cmd_cache(args: argparse.Namespace) -> int:
    """`cache stats | evict --study UID | clear`: on the shared Redis cache directly, or through
    a running gateway's admin endpoints (``--url``), which is the only way to reach an
    in-process cache."""
    import json

    settings = load_settings()
    if args.url:
        import httpx

        if settings.admin_token is None:
            raise ConfigurationError(
                "admin_token: set DWG_ADMIN_TOKEN (or admin_token in DWG_CONFIG_FILE) to the "
                "running gateway's admin token to use --url")
        base = args.url.rstrip("/") + "/admin/cache"
        headers = {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}
        with httpx.Client(timeout=30, headers=headers) as client:
            if args.action == "stats":
                response = client.get(f"{base}/stats")
            elif args.action == "evict":
                body = {k: v for k, v in (("study", args.study), ("series", args.series),
                                          ("pacs", args.pacs)) if v}
                response = client.post(f"{base}/evict", json=body)
            else:
                response = client.post(f"{base}/clear")
        print(response.text)
        return 0 if response.status_code == 200 else 1

    if settings.cache_backend != "redis":
        raise ConfigurationError(
            "cache_backend: the in-process cache lives inside the running gateway; use "
            "--url http://HOST:PORT (with cache_admin_enabled) or a Redis cache")
    from app.cache.factory import build_backend
    from app.cache.store import GatewayCache

    async def run() -> int:
        backend = build_backend(settings)
        assert backend is not None
        try:
            if args.action == "stats":
                print(json.dumps(await backend.stats(), indent=2))
            elif args.action == "clear":
                print(json.dumps({"removed": await backend.clear()}))
            else:
                if not args.study and not args.series:
                    raise ConfigurationError("evict: give --study UID or --series UID")
                peer = settings.peer(args.pacs).name
                cache = GatewayCache(backend, peer, ttl=settings.cache_ttl,
                                     query_ttl=settings.qido_cache_ttl)
                removed = 0
                if args.study:
                    removed += await cache.evict_study(args.study)
                if args.series:
                    removed += await cache.evict_series(args.series)
                print(json.dumps({"removed": removed}))
        finally:
            await backend.close()
        return 0

    return asyncio.run(run())


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _size(text: str) -> int:
    """An argparse type: a byte count, ``500M``, ``2G``, ``1.5GiB`` (units of 1024)."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 500M, 2G, 1048576)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def _duration(text: str) -> float:
    """An argparse type: seconds, or ``90s``, ``15m``, ``1h``, ``1d``."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text, re.IGNORECASE)
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 15m, 1h, 90s)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def _human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _prefetch_summary(progress: dict[str, object]) -> str:
    studies = progress.get("studies") or {}
    series = progress.get("series") or {}
    assert isinstance(studies, dict) and isinstance(series, dict)
    text = (f"prefetch run {progress.get('run')} {progress.get('state')}: "
            f"{studies.get('done')}/{studies.get('total')} studies, "
            f"{series.get('done')}/{series.get('total')} series ({series.get('filled')} filled, "
            f"{series.get('skipped')} already cached, {series.get('failed')} failed), "
            f"{_human_bytes(float(progress.get('bytes') or 0))} in "  # type: ignore[arg-type]
            f"{float(progress.get('elapsed') or 0):.1f} s "  # type: ignore[arg-type]
            f"({_human_bytes(float(progress.get('rate') or 0))}/s)")  # type: ignore[arg-type]
    if progress.get("stopped_by"):
        text += f"; stopped by {progress['stopped_by']}"
    if progress.get("error"):
        text += f"; error: {progress['error']}"
    return text


def _prefetch_once(client: object, base: str, body: dict[str, object], show_bar: bool,
                   poll: float) -> int:
    """One run: start it, follow its progress (a bar on a terminal), print the summary."""
    import time

    import httpx

    assert isinstance(client, httpx.Client)
    response = client.post(base, json=body)
    if response.status_code != 202:
        print(f"dicomweb-gateway: prefetch refused ({response.status_code}): "
              f"{_problem_text(response)}", file=sys.stderr)
        return 1
    run = response.json()["run"]
    progress: dict[str, object] = response.json()
    bar = None
    if show_bar:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        bar = Progress(TextColumn("[bold]prefetch[/]"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("series  {task.fields[studies]} studies  {task.fields[size]}"
                                  "  {task.fields[rate]}  ETA {task.fields[eta]}"),
                       TimeElapsedColumn(), transient=False)
        task = bar.add_task("prefetch", total=None, studies="0/0", size="0 B", rate="",
                            eta="-")
        bar.start()
    try:
        while True:
            state = progress.get("state")
            if bar is not None:
                series = progress.get("series") or {}
                studies = progress.get("studies") or {}
                assert isinstance(series, dict) and isinstance(studies, dict)
                eta = progress.get("eta")
                bar.update(task, total=series.get("total") or None,
                           completed=series.get("done") or 0,
                           studies=f"{studies.get('done')}/{studies.get('total')}",
                           size=_human_bytes(float(progress.get("bytes") or 0)),  # type: ignore[arg-type]
                           rate=f"{_human_bytes(float(progress.get('rate') or 0))}/s",  # type: ignore[arg-type]
                           eta=f"{eta:.0f} s" if isinstance(eta, (int, float)) else "-")
            if state in ("done", "failed", "cancelled"):
                break
            time.sleep(poll)
            current = client.get(base)
            if current.status_code != 200:
                print(f"dicomweb-gateway: reading progress failed ({current.status_code}): "
                      f"{_problem_text(current)}", file=sys.stderr)
                return 1
            progress = current.json()
            if progress.get("run") != run:  # the gateway restarted, or another run started
                print("dicomweb-gateway: the prefetch run is gone (gateway restarted?)",
                      file=sys.stderr)
                return 1
    finally:
        if bar is not None:
            bar.stop()
    print(_prefetch_summary(progress))
    series = progress.get("series") or {}
    failed = series.get("failed") if isinstance(series, dict) else 0
    return 0 if progress.get("state") == "done" and not failed else 1


def _problem_text(response: object) -> str:
    """The message of a DICOM JSON error body, else the body's text."""
    import httpx

    assert isinstance(response, httpx.Response)
    try:
        return str(response.json()["00000902"]["Value"][0])
    except (ValueError, KeyError, IndexError, TypeError):
        return response.text[:300]


def cmd_prefetch(args: argparse.Namespace) -> int:
    """`prefetch --url URL --query Q | --study UID...`: have a running gateway fill its cache
    with a worklist, following the progress; ``--every`` repeats it until interrupted."""
    from urllib.parse import parse_qsl

    import httpx

    settings = load_settings()
    if settings.admin_token is None:
        raise ConfigurationError(
            "admin_token: set DWG_ADMIN_TOKEN (or admin_token in DWG_CONFIG_FILE) to the "
            "running gateway's admin token")
    if bool(args.query) == bool(args.study):
        raise ConfigurationError("prefetch: give --query 'StudyDate=today&...' or --study UID")
    body: dict[str, object] = {}
    if args.query:
        query: dict[str, list[str]] = {}
        for name, value in parse_qsl(args.query.lstrip("?"), keep_blank_values=True):
            query.setdefault(name, []).append(value)
        body["query"] = {k: v[0] if len(v) == 1 else v for k, v in query.items()}
    else:
        body["studies"] = args.study
    for name in ("max_studies", "max_bytes", "concurrency", "pacs"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    base = args.url.rstrip("/") + "/admin/prefetch"
    headers = {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per progress poll
    show_bar = sys.stdout.isatty() and not args.no_progress
    try:
        with httpx.Client(timeout=30, headers=headers) as client:
            return _prefetch_runs(client, base, body, show_bar, args)
    except KeyboardInterrupt:
        print("interrupted; a run already started goes on in the gateway (GET /admin/prefetch); "
              "running the same prefetch again resumes: cached series are skipped",
              file=sys.stderr)
        return 130


def _prefetch_runs(client: object, base: str, body: dict[str, object], show_bar: bool,
                   args: argparse.Namespace) -> int:
    """One run, or one every ``--every`` until interrupted."""
    import time

    import httpx

    while True:
        started = time.monotonic()
        try:
            code = _prefetch_once(client, base, body, show_bar, args.poll)
        except httpx.HTTPError as exc:
            print(f"dicomweb-gateway: {args.url}: {exc}", file=sys.stderr)
            code = 1
        if args.every is None:
            return code
        pause = max(args.every - (time.monotonic() - started), 0.0)
        print(f"next prefetch run in {pause:.0f} s (Ctrl-C to stop)")
        sys.stdout.flush()
        _wait(pause)


def _wait(seconds: float) -> None:
    """The pause between scheduled runs (a seam for tests)."""
    import time

    time.sleep(seconds)


def _port(text: str) -> int:
    """An argparse type: a TCP port number."""
    if not text.isascii() or not text.isdigit() or not 0 < int(text[:6]) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def _workers(text: str) -> int:
    """An argparse type: a number of worker processes (1-64)."""
    if not text.isascii() or not text.isdigit() or not 1 <= int(text[:3]) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (1-64)")
    return int(text)


def _listen_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on for HTTP (default: 127.0.0.1, this machine "
                             "only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=_port, default=8080,
                        help="TCP port to listen on for HTTP (default: 8080)")


def cmd_api_key(args: argparse.Namespace) -> int:
    """Make a new API key: the key for the client, and the config entry with its salted hash."""
    from app.api.credentials import api_key_digest

    key, salt = secrets.token_urlsafe(32), secrets.token_hex(8)
    actions = [a.strip() for a in args.actions.split(",") if a.strip()]
    try:
        entry = ApiKey.model_validate({
            "name": args.name, "sha256": api_key_digest(salt, key).hex(), "salt": salt,
            "actions": actions, "pacs": args.pacs.split(",") if args.pacs else None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigurationError(f"api-key: {where}: {first['msg']}") from None
    print(f"# the key, for the client only (X-API-Key: ...); it is not stored anywhere:\n{key}")
    print("\n# for the gateway's config file:\n[[api_keys]]")
    for field, value in entry.model_dump(exclude_none=True).items():
        print(f"{field} = {json.dumps(value)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate so tests can inspect it)."""
    parser = argparse.ArgumentParser(prog="dicomweb-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway in front of the configured PACS")
    _listen_options(serve)
    serve.add_argument("--workers", type=_workers, default=1,
                       help="worker processes (default 1); with more, /metrics sums them all "
                            "through PROMETHEUS_MULTIPROC_DIR (a temporary directory unless "
                            "set) and the cache should be Redis")
    serve.set_defaults(func=cmd_serve)
    demo = sub.add_parser("demo", help="run the gateway in front of an embedded demo PACS")
    _listen_options(demo)
    demo.set_defaults(func=cmd_demo)
    echo = sub.add_parser("echo", help="C-ECHO the configured PACS")
    echo.add_argument("pacs", nargs="?", help="name of one PACS (default: all)")
    echo.set_defaults(func=cmd_echo)
    cache = sub.add_parser("cache", help="inspect or empty the cache (Redis directly, or a running "
                                         "gateway's admin endpoints with --url)")
    cache.add_argument("action", choices=["stats", "evict", "clear"])
    cache.add_argument("--study", help="StudyInstanceUID to evict")
    cache.add_argument("--series", help="SeriesInstanceUID to evict")
    cache.add_argument("--pacs", help="which PACS's cache (default: the default PACS)")
    cache.add_argument("--url", help="a running gateway's root URL, to use its admin endpoints "
                                     "(sends the admin_token setting, DWG_ADMIN_TOKEN)")
    cache.set_defaults(func=cmd_cache)
    prefetch = sub.add_parser(
        "prefetch", help="have a running gateway fill its cache with a worklist (admin API)")
    prefetch.add_argument("--url", required=True,
                          help="the running gateway's root URL (its admin endpoints must be on; "
                               "sends the admin_token setting, DWG_ADMIN_TOKEN)")
    prefetch.add_argument("--query", help="a QIDO-RS study query, e.g. "
                                          "'StudyDate=today&ModalitiesInStudy=CT' (relative "
                                          "dates: today, yesterday, today-7, ranges of them)")
    prefetch.add_argument("--study", action="append", metavar="UID",
                          help="a StudyInstanceUID to prefetch (repeatable)")
    prefetch.add_argument("--max-studies", type=int, help="at most this many studies (default 50)")
    prefetch.add_argument("--max-bytes", type=_size, metavar="SIZE",
                          help="start no series once this much was filled (e.g. 2G)")
    prefetch.add_argument("--concurrency", type=int,
                          help="series (associations) at once; default 1, leaving the rest of "
                               "the PACS's associations to interactive users")
    prefetch.add_argument("--pacs", help="which PACS (default: the default PACS)")
    prefetch.add_argument("--every", type=_duration, metavar="DURATION",
                          help="repeat the run every DURATION (e.g. 15m) until interrupted")
    prefetch.add_argument("--no-progress", action="store_true",
                          help="no progress bar, only the summary")
    prefetch.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    prefetch.set_defaults(func=cmd_prefetch)
    api_key = sub.add_parser("api-key", help="make a new API key and its hashed config entry")
    api_key.add_argument("name", help="who the key is for (its audit subject)")
    api_key.add_argument("--actions", default="search,retrieve",
                         help="comma-separated: search, retrieve, store, admin "
                              "(default: search,retrieve)")
    api_key.add_argument("--pacs", help="comma-separated PACS names (default: every PACS)")
    api_key.set_defaults(func=cmd_api_key)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    args = build_parser().parse_args(argv)
    level = os.environ.get("DWG_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        result: int = args.func(args)
        return result
    except (ConfigurationError, LookupError) as exc:
        print(f"dicomweb-gateway: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
