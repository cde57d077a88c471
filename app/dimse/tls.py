"""DICOM TLS (PS3.15 Annex B, BCP 195): the SSL contexts of the gateway's DIMSE connections.

One ``ClientTls`` per PACS with a ``tls`` setting, built once at start-up (a bad file fails
there, naming the setting), used by both DIMSE engines: the asyncio engine hands its context to
``loop.create_connection``, the pynetdicom engine to ``AE.associate(tls_args=...)``. A pinned
certificate (SHA-256 of the PACS's DER certificate) is checked right after the handshake and
before the first PDU, on both engines; a mismatch is a ``PinMismatch`` (an ``ssl.SSLError``).
"""

from __future__ import annotations

import hashlib
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from app.settings import PacsPeer, PeerTls, Settings
from app.tlsfiles import TLS12_CIPHERS, load_ca, load_chain, server_context

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class PinMismatch(ssl.SSLError):
    """The PACS presented a certificate whose SHA-256 fingerprint is not a pinned one."""


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate, as 64 lower-case hex digits."""
    return hashlib.sha256(der).hexdigest()


def check_pin(der: bytes | None, pins: frozenset[str]) -> None:
    """Raise PinMismatch unless the peer's certificate is one of ``pins`` (none: no check)."""
    if not pins:
        return
    if der is None:
        raise PinMismatch("the PACS presented no certificate to check against pinned_sha256")
    seen = fingerprint(der)
    if seen not in pins:
        raise PinMismatch(f"certificate SHA-256 {seen} is not one of pinned_sha256")


class _PinCheckingSocket(ssl.SSLSocket):
    """An SSLSocket that checks the pinned fingerprints once its handshake is done, and keeps
    the TLS error of its handshake or of a read (pynetdicom only logs them) for the message
    the client is given: with TLS 1.3 a server refusing our certificate says so on the first
    read after the handshake."""

    pins: frozenset[str] = frozenset()
    tls_error: OSError | None = None

    def do_handshake(self, block: bool = False) -> None:  # noqa: D102 - see class docstring
        try:
            super().do_handshake(block)
            check_pin(self.getpeercert(binary_form=True), self.pins)
        except OSError as exc:
            self.tls_error = exc
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:  # noqa: D102
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            self.tls_error = self.tls_error or exc
            raise


@dataclass
class ClientTls:
    """The TLS settings of the gateway's connections to one PACS, ready to use."""

    context: ssl.SSLContext
    server_hostname: str
    pins: frozenset[str] = field(default_factory=frozenset)

    def check(self, ssl_object: Any) -> None:
        """After an asyncio handshake: the pinned-certificate check (PinMismatch)."""
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        check_pin(der, self.pins)

    def for_pynetdicom(self) -> tuple[_PynetdicomTls, str]:
        """``tls_args`` for one pynetdicom association: records the socket it wraps, so a
        failed handshake can be explained (see ``handshake_error``)."""
        return _PynetdicomTls(self.context), self.server_hostname


class _PynetdicomTls:
    """What pynetdicom calls ``wrap_socket`` on: the peer's context, remembering the socket."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self.socket: _PinCheckingSocket | None = None

    def wrap_socket(self, sock: Any, **kwargs: Any) -> ssl.SSLSocket:
        """Wrap as the shared context would, and keep the result."""
        wrapped = self._context.wrap_socket(sock, **kwargs)
        if isinstance(wrapped, _PinCheckingSocket):
            self.socket = wrapped
        return wrapped

    @property
    def tls_error(self) -> OSError | None:
        """Why the handshake (or a read after it) failed, if it did."""
        return self.socket.tls_error if self.socket is not None else None


def client_tls(peer: PacsPeer) -> ClientTls | None:
    """The TLS context for ``peer``, or None when it is reached without TLS.

    Verification: with ``ca_file``, the chain must lead to one of its certificates (else the
    system's trust store), and unless ``verify_hostname`` is false the certificate must name
    ``server_name`` (default: the peer's ``host``; an IP address is matched against IP SANs).
    With ``pinned_sha256`` and no ``ca_file``, the pin alone decides (a self-signed PACS)."""
    tls = peer.tls
    if tls is None:
        return None
    what = f"pacs.{peer.name}.tls"
    context = _client_context(tls, what)
    pins = frozenset(tls.pinned_sha256)
    if pins:
        context.sslsocket_class = type(  # type: ignore[assignment]
            "PinnedSocket", (_PinCheckingSocket,), {"pins": pins})
    else:
        context.sslsocket_class = _PinCheckingSocket  # type: ignore[assignment]
    return ClientTls(context, tls.server_name or peer.host, pins)


_cache: dict[str, ClientTls] = {}
_cache_lock = threading.Lock()


def client_tls_cached(peer: PacsPeer) -> ClientTls | None:
    """``client_tls(peer)``, built once per distinct setting in this process (the pynetdicom
    engine opens an association per operation, from worker threads)."""
    if peer.tls is None:
        return None
    secret = peer.tls.key_password.get_secret_value() if peer.tls.key_password else ""
    key = f"{peer.name}\0{peer.host}\0{peer.tls.model_dump_json()}\0{secret}"
    with _cache_lock:
        found = _cache.get(key)
        if found is None:
            found = _cache[key] = client_tls(peer)  # type: ignore[assignment]
        return found


def _client_context(tls: PeerTls, what: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.set_ciphers(TLS12_CIPHERS)
    if tls.ca_file is not None:
        load_ca(context, tls.ca_file, f"{what}.ca_file")
    elif not tls.pinned_sha256:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.ca_file is None and tls.pinned_sha256:
        context.check_hostname = False  # the pin identifies the PACS; no CA vouches for it
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = tls.verify_hostname
        context.verify_mode = ssl.CERT_REQUIRED
    if tls.cert_file is not None:
        password = tls.key_password.get_secret_value() if tls.key_password else None
        load_chain(context, tls.cert_file, tls.key_file, password, f"{what}.cert_file")
    return context


CLOSED_AFTER_HANDSHAKE = ("DICOM TLS: the PACS closed the connection after the TLS handshake "
                          "without answering the association request (does it accept the "
                          "gateway's client certificate, or require one?)")


def describe(exc: BaseException) -> str:
    """A short reason for a failed TLS handshake, for logs and error details."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, PinMismatch):
        return str(exc.args[0]) if exc.args else "pinned certificate mismatch"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc)
        if "CERTIFICATE_REQUIRED" in reason:
            return f"the PACS requires a client certificate (set cert_file and key_file): {reason}"
        if "ALERT" in reason:
            return f"the PACS ended the TLS handshake: {reason}"
        return f"TLS handshake failed: {reason}"
    return str(exc) or type(exc).__name__


def storage_scp_context(settings: Settings) -> ssl.SSLContext | None:
    """The Storage SCP's TLS server context, or None when it listens without TLS."""
    if settings.storage_scp_tls_cert_file is None:
        return None
    password = settings.storage_scp_tls_key_password
    return server_context(settings.storage_scp_tls_cert_file, settings.storage_scp_tls_key_file,
                          password.get_secret_value() if password else None,
                          settings.storage_scp_tls_ca_file, "storage_scp_tls")


class DeferredHandshake:
    """What pynetdicom's association server calls ``wrap_socket`` on: it wraps each accepted
    socket in its accepting thread, so the handshake is deferred to the first read, in the
    association's own thread (a client that never completes it blocks only itself)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    def wrap_socket(self, sock: Any, server_side: bool = True, **kwargs: Any) -> ssl.SSLSocket:
        """Wrap without handshaking now."""
        return self.context.wrap_socket(sock, server_side=server_side,
                                        do_handshake_on_connect=False, **kwargs)
