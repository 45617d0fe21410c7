"""The value types the stack schema is built from, each with the check that fails a bad value with its
fix: a strict model base, DNS names, Kubernetes quantities, CIDR blocks, host:port addresses. Imports
pydantic only."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, ConfigDict

from infra.quantity import byte_count, cpu_millis
from services.common import config

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class Strict(config.Strict):
    """The federation schema's base (unknown keys are errors, frozen), minus its strict types: stack
    config values may be coerced (a Pulumi config string for a number)."""

    model_config = ConfigDict(strict=False)


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError(f"{value!r} must be a DNS-1123 label (lowercase letters, digits, '-'; <= 63 chars)")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]


def _dns_subdomain(value: str) -> str:
    if len(value) > 253 or not all(_DNS_LABEL.match(part) for part in value.split(".")):
        raise ValueError(
            f"{value!r} must be a DNS-1123 subdomain (lowercase letters, digits, '-', '.'; <= 253 chars)"
        )
    return value


DnsSubdomain = Annotated[str, AfterValidator(_dns_subdomain)]


def _cpu(value: str) -> str:
    cpu_millis(value)
    return value


def _bytes(value: str) -> str:
    byte_count(value)
    return value


CpuQuantity = Annotated[str, AfterValidator(_cpu)]  # e.g. 500m or 2
ByteQuantity = Annotated[str, AfterValidator(_bytes)]  # e.g. 512Mi or 4Gi


def cidr_block(text: str, example: str, what: str, name: str) -> str:
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a CIDR block (e.g. {example}): {exc}") from None
    if network.prefixlen == 0:
        raise ValueError(f"{text!r} would allow {what} to every address: name {name}")
    return str(network)  # a bare address becomes /32 (/128): ipBlock needs a prefix


def cidr_blocks(v: tuple[str, ...], example: str, what: str, name: str) -> tuple[str, ...]:
    cidrs = [cidr_block(text, example, what, name) for text in v]
    if repeated := sorted({c for c in cidrs if cidrs.count(c) > 1}):
        raise ValueError(f"{repeated} listed more than once")
    return tuple(cidrs)


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} must be host:port (e.g. hub.example.org:443 or 203.0.113.7:50051)")
    return host, int(port)


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
