"""Stand-ins for stack secrets that are never decrypted: ``tff-k8s render`` and the tests run the program
under mocks (infra/harness/) with a placeholder for each secret, and the program tells one from real
material (infra/pki.py hashes a placeholder certificate as text, so a render shows where it lands)."""

from __future__ import annotations

import re

_PLACEHOLDER = re.compile(r"^<[^<>]+: stack secret, not decrypted under mocks>$")


def placeholder(key: str) -> str:
    return f"<{key}: stack secret, not decrypted under mocks>"


def is_placeholder(value: object) -> bool:
    """Whether ``value`` is a :func:`placeholder` (or something made from one), not real material."""
    return isinstance(value, str) and bool(_PLACEHOLDER.match(value))
