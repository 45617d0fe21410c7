"""What every config schema shares: the strict pydantic base, the error type and the one error
formatter (each error names its dotted key). pydantic only."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

MiB = 1024 * 1024


class ConfigError(ValueError):
    """Invalid federation config. The message names each bad key and the fix."""


class Strict(BaseModel):
    # strict: a YAML `yes` is not 1 round and `"8080"` is not a port; ints still fill float fields.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True)


def format_errors(err: ValidationError, *, what: str = "federation config",
                  schema: str = "services/common/config/") -> str:
    """One line per error: the dotted key, then what is wrong with it."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown key (check its spelling against {schema})"
        lines.append(f"{key}: {msg}")
    return f"invalid {what}:\n  " + "\n  ".join(lines)
