"""Who is calling: in a cross-silo federation (``security.silos``) a client's silo is the one whose
certificate it presented in the mutual-TLS handshake, found by the certificate's SHA-256; a name
the client states never counts. A certificate the CA signed but that is not one of the stack's
silos (a silo removed from the stack, a stray one) is refused with UNAUTHENTICATED.

Without ``security.silos`` every caller is of the one unnamed silo ``""`` (single-cluster stacks)."""

from __future__ import annotations

import hashlib
import ssl
import threading
from collections.abc import Iterable

import grpc

from services.common.config import SiloIdentity

PEER_CERT = "x509_pem_cert"  # gRPC's auth-context key for the peer's certificate (PEM)
NO_SILO = ""


class NotASilo(Exception):
    """The caller's certificate is not one of the stack's silos."""


def cert_sha256(pem: bytes | str) -> str:
    """The SHA-256 of a PEM certificate's DER bytes, lowercase hex (what ``security.silos`` lists)."""
    text = pem.decode() if isinstance(pem, bytes) else pem
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(text)).hexdigest()


class SiloGate:
    """Maps a call's peer certificate to its silo (cached per certificate: the handshake already
    proved the peer holds its key)."""

    def __init__(self, silos: Iterable[SiloIdentity]) -> None:
        self._by_fingerprint = {s.cert_sha256: s.name for s in silos}
        self._cache: dict[bytes, str] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._by_fingerprint)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_fingerprint.values()))

    def silo_of(self, context: grpc.ServicerContext) -> str:
        """The caller's silo; :class:`NotASilo` if silos are configured and its certificate is none of them."""
        if not self.enabled:
            return NO_SILO
        pems = (context.auth_context() or {}).get(PEER_CERT) or []
        if not pems:
            raise NotASilo("no client certificate was presented (cross-silo federations need mutual TLS)")
        pem = pems[0]
        with self._lock:
            silo = self._cache.get(pem)
        if silo is not None:
            return silo
        try:
            fingerprint = cert_sha256(pem)
        except (ValueError, UnicodeDecodeError):
            raise NotASilo("the client certificate could not be read") from None
        silo = self._by_fingerprint.get(fingerprint)
        if silo is None:
            raise NotASilo(f"client certificate sha256:{fingerprint[:16]}... is not one of this federation's silos")
        with self._lock:
            self._cache[pem] = silo
        return silo
