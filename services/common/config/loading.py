"""Where a config comes from: defaults <- YAML file <- environment <- ``--set`` overrides, validated
once at the end; and the command line both containers share."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from services.common.config.base import ConfigError, format_errors
from services.common.config.federation import FederationConfig

CONFIG_ENV = "TFF_K8S_CONFIG"
SERVER_ADDRESS_ENV = "SERVER_ADDRESS"


def from_mapping(data: Mapping[str, Any] | None) -> FederationConfig:
    try:
        return FederationConfig.model_validate(dict(data or {}))
    except ValidationError as err:
        raise ConfigError(format_errors(err)) from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> FederationConfig:
    """Defaults <- YAML file <- environment <- overrides, validated once at the end."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: must hold a mapping of sections, not {type(loaded).__name__}")
        data = loaded or {}
    merged = dict(data)
    if environ.get(SERVER_ADDRESS_ENV):
        merged.setdefault("client", {})
        if not isinstance(merged["client"], dict):
            raise ConfigError("client: must be a mapping")
        merged["client"] = {**merged["client"], "server_address": environ[SERVER_ADDRESS_ENV]}
    for key, value in (overrides or {}).items():
        _set_dotted_creating(merged, key, value)
    return from_mapping(merged)


def _set_dotted_creating(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a section")
    node[parts[-1]] = value


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["training.rounds=3", ...]`` -> ``{"training.rounds": 3}``; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value (e.g. training.rounds=3)")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key.strip()}: value {raw!r} is not a YAML scalar ({exc.problem})") from None
    return out


def entrypoint_parser(role: str) -> argparse.ArgumentParser:
    """The command line both containers use: ``python -m services.<role> [--config F] [--set k=v ...]``."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{role}", description=f"tff-k8s federation {role}")
    parser.add_argument("--config", help=f"YAML federation config (default: ${CONFIG_ENV})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set training.rounds=3 (repeatable)",
    )
    return parser


def config_from_argv(role: str, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> FederationConfig:
    """Parse a container's args + env into a config exactly as the entrypoint does (used by contract tests)."""
    args = entrypoint_parser(role).parse_args(list(argv))
    return load_config(args.config, overrides=parse_set(args.overrides), environ=environ)
