"""`dicomweb-gateway serve | demo | echo | cache`: run the DICOMweb gateway in front of a PACS (or
an embedded demo PACS), C-ECHO the configured PACS, or inspect and empty the cache."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence

from app.settings import ConfigurationError, PacsPeer, Settings, load_settings


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


def _serve(settings: Settings, sock: socket.socket) -> None:
    import uvicorn

    from app.main import create_app

    config = uvicorn.Config(create_app(settings), log_level=settings.log_level.lower())
    uvicorn.Server(config).run(sockets=[sock])


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gateway on the configured PACS."""
    settings = load_settings()
    if not settings.pacs:
        raise ConfigurationError("pacs: no PACS configured; set DWG_PACS or DWG_CONFIG_FILE")
    _serve(settings, _listen(args.host, args.port))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Start an embedded demo PACS with sample studies and the gateway in front of it."""
    from app.demo.pacs import DemoPacs
    from app.demo.samples import generate_sample_studies

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
    root = f"http://{shown_host}:{args.port}{settings.dicomweb_prefix}"
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
        _serve(settings, sock)
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


def _port(text: str) -> int:
    """An argparse type: a TCP port number."""
    if not text.isascii() or not text.isdigit() or not 0 < int(text[:6]) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def _listen_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on for HTTP (default: 127.0.0.1, this machine "
                             "only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=_port, default=8080,
                        help="TCP port to listen on for HTTP (default: 8080)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate so tests can inspect it)."""
    parser = argparse.ArgumentParser(prog="dicomweb-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway in front of the configured PACS")
    _listen_options(serve)
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
