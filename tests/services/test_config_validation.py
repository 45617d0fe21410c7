"""The federation config: defaults are valid, every bad value fails with a ConfigError that names the
key, sources stack in the documented order (file < env < --set), and the YAML the ConfigMap carries
loads back to the same config. The schema must import without TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.config import (
    CONFIG_ENV,
    SERVER_ADDRESS_ENV,
    ConfigError,
    FederationConfig,
    config_from_argv,
    from_mapping,
    load_config,
    parse_set,
)

REPO = Path(__file__).resolve().parents[2]


def names_key(message: str, dotted: str) -> bool:
    """The message names ``section.field`` either dotted or as ``section: ... field ...``."""
    section, _, name = dotted.partition(".")
    return dotted in message or (f"{section}:" in message and name in message)


def config_error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        from_mapping(data)
    return str(info.value)


# ---- defaults -------------------------------------------------------------------------------------
def test_defaults_are_valid() -> None:
    cfg = from_mapping({})
    assert cfg == FederationConfig()
    assert cfg == load_config(environ={})
    assert cfg.training.required_results == cfg.training.clients_per_round
    assert cfg.num_shards == cfg.training.min_clients
    assert cfg.training.clients_per_round <= cfg.training.min_clients
    assert cfg.server.port != cfg.server.metrics_port


def test_derived_values_follow_their_sources() -> None:
    cfg = from_mapping({"training": {"min_clients": 5, "clients_per_round": 4, "min_results": 3},
                        "data": {"num_shards": 7}})
    assert cfg.training.required_results == 3
    assert cfg.num_shards == 7
    assert from_mapping({"training": {"min_clients": 5, "clients_per_round": 4}}).num_shards == 5


# ---- bad values name their key --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"server": {"port": 0}}, "server.port"),
        ({"server": {"port": 65536}}, "server.port"),
        ({"server": {"port": "http"}}, "server.port"),
        ({"server": {"metrics_port": 0}}, "server.metrics_port"),
        ({"server": {"port": 7000, "metrics_port": 7000}}, "server.metrics_port"),
        ({"server": {"chunk_bytes": 4 * 1024 * 1024}}, "server.chunk_bytes"),
        ({"server": {"chunk_bytes": 10}}, "server.chunk_bytes"),
        ({"server": {"tff_startup_timeout_s": 0}}, "server.tff_startup_timeout_s"),
        ({"training": {"rounds": 0}}, "training.rounds"),
        ({"training": {"rounds": 2.5}}, "training.rounds"),
        ({"training": {"clients_per_round": 3, "min_clients": 2}}, "training.clients_per_round"),
        ({"training": {"min_results": 3, "clients_per_round": 2, "min_clients": 2}}, "training.min_results"),
        ({"training": {"min_results": 0}}, "training.min_results"),
        ({"training": {"round_deadline_s": 0}}, "training.round_deadline_s"),
        ({"training": {"client_learning_rate": -0.1}}, "training.client_learning_rate"),
        ({"training": {"dp_clip": 0}}, "training.dp_clip"),
        ({"training": {"aggregator": "median"}}, "training.aggregator"),
        ({"training": {"server_optimizer": "rmsprop"}}, "training.server_optimizer"),
        ({"training": {"seed": -1}}, "training.seed"),
        ({"data": {"source": "npz"}}, "data.npz_dir"),
        ({"data": {"source": "csv"}}, "data.source"),
        ({"data": {"partition": "shards"}}, "data.partition"),
        ({"data": {"dirichlet_alpha": 0}}, "data.dirichlet_alpha"),
        ({"data": {"eval_fraction": 1.0}}, "data.eval_fraction"),
        ({"data": {"num_shards": 0}}, "data.num_shards"),
        ({"security": {"tls": False, "mutual_tls": True}}, "security.mutual_tls"),
        ({"client": {"server_address": "localhost"}}, "client.server_address"),
        ({"client": {"server_address": ":50051"}}, "client.server_address"),
        ({"client": {"server_address": "host:0"}}, "client.server_address"),
        ({"client": {"server_address": "host:70000"}}, "client.server_address"),
        ({"client": {"server_address": "host:port"}}, "client.server_address"),
        ({"client": {"health_port": -1}}, "client.health_port"),
        ({"model": {"hidden_units": 0}}, "model.hidden_units"),
    ],
)
def test_bad_value_names_its_key(data: dict, key: str) -> None:
    message = config_error(data)
    assert names_key(message, key), message


def test_cross_field_errors_say_how_to_fix() -> None:
    message = config_error({"training": {"clients_per_round": 3, "min_clients": 2}})
    assert "training.clients_per_round" in message and "training.min_clients" in message
    message = config_error({"security": {"tls": False, "mutual_tls": True}})
    assert "security.tls" in message
    # TFF's adaptive DP clipping noises the clipped count with 0.05 x clients_per_round: a noise
    # multiplier of 2 x that or more is refused before the server starts (TFF would refuse it then)
    dp = {"aggregator": "dp", "dp_noise_multiplier": 0.2, "clients_per_round": 2, "min_clients": 2}
    message = config_error({"training": dp})
    assert all(k in message for k in ("training.clients_per_round", "training.dp_noise_multiplier", "training.dp_clip"))
    assert from_mapping({"training": {**dp, "dp_noise_multiplier": 0.19}}).training.dp_noise_multiplier == 0.19
    assert from_mapping({"training": {**dp, "dp_clip": 1.0}}).training.dp_clip == 1.0  # fixed clipping: no count noise


@pytest.mark.parametrize(
    ("data", "key"),
    [({"trainig": {}}, "trainig"), ({"training": {"roundz": 3}}, "training.roundz"),
     ({"server": {"port": 1, "prot": 2}}, "server.prot")],
)
def test_unknown_keys_are_named(data: dict, key: str) -> None:
    message = config_error(data)
    assert f"{key}: unknown key" in message, message


def test_every_bad_key_is_reported_at_once() -> None:
    message = config_error({"server": {"port": 0}, "training": {"rounds": 0}})
    assert "server.port" in message and "training.rounds" in message


def test_section_that_is_not_a_mapping_is_named() -> None:
    message = config_error({"training": 3})
    assert "training" in message


@pytest.mark.parametrize(("key", "value"), [("training.rounds", True), ("server.port", True),
                                          ("server.port", "8080"), ("security.tls", "yes"), ("training.seed", 1.0)])
def test_values_are_not_coerced_across_types(key: str, value: object) -> None:
    """A YAML ``yes`` is not 1 round and ``"8080"`` is not a port."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides={key: value}, environ={})


def test_ints_fill_float_fields() -> None:
    cfg = load_config(overrides={"training.round_deadline_s": 5, "training.client_learning_rate": 1}, environ={})
    assert cfg.training.round_deadline_s == 5.0 and cfg.training.client_learning_rate == 1.0


# ---- --set parsing ----------------------------------------------------------------------------------
def test_parse_set_reads_yaml_scalars() -> None:
    assert parse_set(["training.rounds=3", "security.tls=false", "security.token_file=null",
                      "training.client_learning_rate=0.05", "client.name=", "client.name2=a=b"]) == {
        "training.rounds": 3, "security.tls": False, "security.token_file": None,
        "training.client_learning_rate": 0.05, "client.name": "", "client.name2": "a=b",
    }


@pytest.mark.parametrize("item", ["training.rounds", "=3", ""])
def test_parse_set_rejects_items_without_key_and_value(item: str) -> None:
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_set([item])


@pytest.mark.parametrize("item", ["training.rounds=[1", "client.name={oops", "client.name=a: b: c"])
def test_parse_set_invalid_yaml_value_is_a_config_error(item: str) -> None:
    with pytest.raises(ConfigError, match=item.partition("=")[0].replace(".", r"\.")):
        parse_set([item])


def test_set_into_a_scalar_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="training.rounds"):
        load_config(overrides={"training.rounds": 3, "training.rounds.x": 1}, environ={})
    with pytest.raises(ConfigError, match="client"):
        load_config(overrides={"client": "x", "client.name": "a"}, environ={})


def test_set_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"training\.roundz: unknown key"):
        load_config(overrides=parse_set(["training.roundz=3"]), environ={})


# ---- YAML files -------------------------------------------------------------------------------------
def test_yaml_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("training:\n  rounds: 7\n  seed: 3\nsecurity:\n  tls: false\n")
    cfg = load_config(path, environ={})
    assert (cfg.training.rounds, cfg.training.seed, cfg.security.tls) == (7, 3, False)


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_yaml_file_means_defaults(tmp_path: Path, text: str) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(text)
    assert load_config(path, environ={}) == FederationConfig()


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just a string\n", "str"), ("3\n", "int")])
def test_yaml_file_that_is_not_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"must hold a mapping.*{kind}") as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)


def test_missing_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)


def test_directory_as_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path, environ={})


@pytest.mark.parametrize("text", ["training: [1,\n", "a:\n\tb: 1\n", "key: 'unterminated\n"])
def test_invalid_yaml_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)


def test_bad_value_in_file_names_key(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("server:\n  port: 0\n")
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_config(path, environ={})


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("training:\n  rounds: 4\n")
    assert load_config(environ={CONFIG_ENV: str(path)}).training.rounds == 4
    # An explicit path wins over the environment's.
    other = tmp_path / "g.yaml"
    other.write_text("training:\n  rounds: 5\n")
    assert load_config(other, environ={CONFIG_ENV: str(path)}).training.rounds == 5


# ---- sources and precedence -------------------------------------------------------------------------
def test_server_address_env_overrides_default() -> None:
    cfg = load_config(environ={SERVER_ADDRESS_ENV: "tff-server.tff.svc:6000"})
    assert cfg.client.server_address == "tff-server.tff.svc:6000"


def test_empty_server_address_env_is_ignored() -> None:
    assert load_config(environ={SERVER_ADDRESS_ENV: ""}).client.server_address == FederationConfig().client.server_address


def test_bad_server_address_env_names_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={SERVER_ADDRESS_ENV: "no-port"})
    assert names_key(str(info.value), "client.server_address")


def test_precedence_file_then_env_then_set(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("client:\n  server_address: file:1\n  name: from-file\ntraining:\n  rounds: 2\n")
    env = {SERVER_ADDRESS_ENV: "env:2"}
    assert load_config(path, environ={}).client.server_address == "file:1"
    from_env = load_config(path, environ=env)
    assert from_env.client.server_address == "env:2"
    assert from_env.client.name == "from-file"  # the env replaces one key, not the section
    from_set = load_config(path, environ=env, overrides={"client.server_address": "set:3", "training.rounds": 9})
    assert from_set.client.server_address == "set:3"
    assert from_set.client.name == "from-file"
    assert from_set.training.rounds == 9


def test_env_with_null_client_section_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("client: 3\n")
    with pytest.raises(ConfigError, match="client"):
        load_config(path, environ={SERVER_ADDRESS_ENV: "a:1"})


def test_load_config_does_not_mutate_its_inputs(tmp_path: Path) -> None:
    overrides = {"training.rounds": 4}
    env = {SERVER_ADDRESS_ENV: "a:1"}
    load_config(environ=env, overrides=overrides)
    assert overrides == {"training.rounds": 4} and env == {SERVER_ADDRESS_ENV: "a:1"}


def test_default_environ_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setenv(SERVER_ADDRESS_ENV, "from-os:7")
    assert load_config().client.server_address == "from-os:7"


# ---- YAML round trip -------------------------------------------------------------------------------
def test_to_yaml_round_trips(tmp_path: Path) -> None:
    cfg = from_mapping({
        "server": {"port": 6000, "metrics_port": 6001, "output_dir": "/data/out"},
        "training": {"rounds": 3, "min_clients": 4, "clients_per_round": 3, "min_results": 2, "aggregator": "dp"},
        "data": {"partition": "dirichlet", "dirichlet_alpha": 0.1, "num_shards": 8},
        "security": {"tls": True, "mutual_tls": True, "token_file": None},
        "client": {"server_address": "[::1]:6000", "name": "pod-0"},
    })
    path = tmp_path / "f.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path, environ={}) == cfg
    assert cfg.to_yaml() == load_config(path, environ={}).to_yaml()  # deterministic


def test_to_yaml_is_a_plain_mapping_of_sections() -> None:
    loaded = yaml.safe_load(FederationConfig().to_yaml())
    assert set(loaded) == set(FederationConfig.model_fields)
    assert {"server", "training", "data", "security", "client"} <= set(loaded)
    assert all(isinstance(section, dict) for section in loaded.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(["null", "yes", "no", "~", "0x10", "1e3", "- x", "a: b", "#c", "'q'", ""]) | st.text(
        st.characters(blacklist_categories=("Cs", "Cc")), max_size=20),
    rounds=st.integers(1, 1_000_000),
    lr=st.floats(min_value=1e-9, max_value=1e3, allow_nan=False),
    token=st.none() | st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20),
)
def test_to_yaml_round_trips_awkward_values(tmp_path: Path, name: str, rounds: int, lr: float,
                                            token: str | None) -> None:
    cfg = from_mapping({"client": {"name": name}, "training": {"rounds": rounds, "client_learning_rate": lr},
                        "security": {"token_file": token}})
    path = tmp_path / "f.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path, environ={}) == cfg


# ---- the entrypoint's command line -----------------------------------------------------------------
def test_config_from_argv(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("training:\n  rounds: 2\n  seed: 5\n")
    cfg = config_from_argv(
        "client", ["--config", str(path), "--set", "training.rounds=6", "--set", "client.name=c1"],
        environ={SERVER_ADDRESS_ENV: "srv:9"},
    )
    assert (cfg.training.rounds, cfg.training.seed, cfg.client.name, cfg.client.server_address) == (6, 5, "c1", "srv:9")


def test_config_from_argv_later_set_wins() -> None:
    cfg = config_from_argv("server", ["--set", "training.rounds=2", "--set", "training.rounds=3"], environ={})
    assert cfg.training.rounds == 3


def test_config_from_argv_bad_set_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"server\.port"):
        config_from_argv("server", ["--set", "server.port=0"], environ={})
    with pytest.raises(ConfigError, match=r"training\.rounds"):
        config_from_argv("server", ["--set", "training.rounds=[1"], environ={})
    with pytest.raises(ConfigError, match="dotted.key=value"):
        config_from_argv("server", ["--set", "server.port"], environ={})


def test_config_from_argv_unknown_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        config_from_argv("server", ["--bogus"], environ={})
    assert info.value.code == 2
    assert "--bogus" in capsys.readouterr().err


# ---- light imports ----------------------------------------------------------------------------------
def test_config_module_does_not_import_tensorflow() -> None:
    code = ("import sys, services.common.config; "
            "heavy = sorted(m for m in ('tensorflow', 'tensorflow_federated', 'jax') if m in sys.modules); "
            "assert not heavy, heavy")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
