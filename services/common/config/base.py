"""What every config schema shares: the strict pydantic base, the error type and the one error
formatter (each error names its dotted key). pydantic only."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, ValidationError

MiB = 1024 * 1024


class ConfigError(ValueError):
    """Invalid federation config. The message names each bad key and the fix."""


class Strict(BaseModel):
    # strict: a YAML `yes` is not 1 round and `"8080"` is not a port; ints still fill float fields.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True)


def problems(err: ValidationError, *, schema: str,
             replaced: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Each error as (dotted key, what is wrong with it); an unknown key points at ``schema``, or
    says what replaced it (``replaced``: keys earlier versions had)."""
    out = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = (replaced or {}).get(key) or f"unknown key (check its spelling against {schema})"
        out.append((key, msg))
    return out


def format_errors(err: ValidationError, *, what: str = "federation config",
                  schema: str = "services/common/config/") -> str:
    """One line per error: the dotted key, then what is wrong with it."""
    return f"invalid {what}:\n  " + "\n  ".join(f"{k}: {m}" for k, m in problems(err, schema=schema))
