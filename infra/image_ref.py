"""Container image references: tag and digest rules the stack config enforces."""

from __future__ import annotations

import re
from typing import NamedTuple

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class ImageRef(NamedTuple):
    repository: str
    tag: str | None
    digest: str | None


def parse_image(ref: str) -> ImageRef:
    """Split ``registry:5000/repo:tag@sha256:...`` into its parts; raise ValueError if malformed."""
    ref = ref.strip()
    name, _, digest = ref.partition("@")
    colon = name.rfind(":")
    has_tag = colon > name.rfind("/")  # a colon before the last slash is a registry port
    repository, tag = (name[:colon], name[colon + 1 :]) if has_tag else (name, None)
    if not repository or repository.endswith("/") or any(c.isspace() for c in ref):
        raise ValueError(f"{ref!r} is not an image reference (expected repo[:tag][@sha256:<64 hex>])")
    if digest and not _DIGEST.match(digest):
        raise ValueError(f"{ref!r}: the digest must be sha256:<64 lowercase hex digits>")
    if tag is not None and not _TAG.match(tag):
        raise ValueError(f"{ref!r}: {tag!r} is not a valid tag")
    return ImageRef(repository, tag, digest or None)


def check_image(ref: str, *, require_digest: bool) -> str:
    """The reference if it obeys the rules: never ``latest``, never untagged, a digest when required."""
    image = parse_image(ref)
    if image.tag == "latest":
        raise ValueError(f"{ref!r} uses the mutable tag 'latest': pin a version tag or a digest")
    if image.tag is None and image.digest is None:
        raise ValueError(f"{ref!r} has neither tag nor digest (it would pull 'latest'): pin one")
    if require_digest and image.digest is None:
        raise ValueError(f"{ref!r} is not pinned by digest: append @sha256:<digest> (prod requires it)")
    return ref
