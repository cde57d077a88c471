"""`dicomweb-gateway serve | demo | echo`: the command-line entry points."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from app.settings import ConfigurationError, PacsPeer, Settings, load_settings


def _serve(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from app.main import create_app

    uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level.lower())


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gateway on the configured PACS."""
    settings = load_settings()
    if not settings.pacs:
        raise ConfigurationError("pacs: no PACS configured; set DWG_PACS or DWG_CONFIG_FILE")
    _serve(settings, args.host, args.port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Start an embedded demo PACS with sample studies and the gateway in front of it."""
    from app.demo.pacs import DemoPacs
    from app.demo.samples import generate_sample_studies

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
        _serve(settings, args.host, args.port)
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

    if args.url:
        import httpx

        base = args.url.rstrip("/") + "/admin/cache"
        with httpx.Client(timeout=30) as client:
            if args.action == "stats":
                response = client.get(f"{base}/stats")
            elif args.action == "evict":
                params = {k: v for k, v in (("study", args.study), ("series", args.series),
                                            ("pacs", args.pacs)) if v}
                response = client.post(f"{base}/evict", params=params)
            else:
                response = client.post(f"{base}/clear")
        print(response.text)
        return 0 if response.status_code == 200 else 1

    settings = load_settings()
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate so tests can inspect it)."""
    parser = argparse.ArgumentParser(prog="dicomweb-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway in front of the configured PACS")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.set_defaults(func=cmd_serve)
    demo = sub.add_parser("demo", help="run the gateway in front of an embedded demo PACS")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.set_defaults(func=cmd_demo)
    echo = sub.add_parser("echo", help="C-ECHO the configured PACS")
    echo.add_argument("pacs", nargs="?", help="name of one PACS (default: all)")
    echo.set_defaults(func=cmd_echo)
    cache = sub.add_parser("cache", help="inspect or empty the cache")
    cache.add_argument("action", choices=["stats", "evict", "clear"])
    cache.add_argument("--study", help="StudyInstanceUID to evict")
    cache.add_argument("--series", help="SeriesInstanceUID to evict")
    cache.add_argument("--pacs", help="which PACS's cache (default: the default PACS)")
    cache.add_argument("--url", help="a running gateway's root URL, to use its admin endpoints")
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
