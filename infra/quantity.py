"""Kubernetes resource quantities: parse the two kinds the program budgets (cpu, memory/storage)
and format sums back, so quota and limit checks are arithmetic rather than string guesses."""

from __future__ import annotations

import re
from decimal import Decimal

_NUMBER = r"(?P<num>\d+(?:\.\d+)?)"
_CPU = re.compile(rf"^{_NUMBER}(?P<unit>m?)$")
_BYTES = re.compile(rf"^{_NUMBER}(?P<unit>Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
_BYTE_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}


def cpu_millis(quantity: str) -> int:
    """``"500m"`` -> 500, ``"2"`` -> 2000, ``"0.5"`` -> 500."""
    match = _CPU.match(str(quantity).strip())
    if not match:
        raise ValueError(f"{quantity!r} is not a cpu quantity (use e.g. 500m or 2)")
    value = Decimal(match["num"])
    millis = value if match["unit"] == "m" else value * 1000
    if millis != millis.to_integral_value() or millis <= 0:
        raise ValueError(f"{quantity!r} must be a positive whole number of millicores")
    return int(millis)


def byte_count(quantity: str) -> int:
    """``"512Mi"`` -> 536870912, ``"1G"`` -> 10**9 (memory and storage)."""
    match = _BYTES.match(str(quantity).strip())
    if not match:
        raise ValueError(f"{quantity!r} is not a byte quantity (use e.g. 512Mi or 2Gi)")
    count = Decimal(match["num"]) * _BYTE_UNITS[match["unit"]]
    if count != count.to_integral_value() or count <= 0:
        raise ValueError(f"{quantity!r} must be a positive whole number of bytes")
    return int(count)


def format_cpu(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def format_bytes(count: int) -> str:
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        if count % _BYTE_UNITS[unit] == 0:
            return f"{count // _BYTE_UNITS[unit]}{unit}"
    return str(count)
