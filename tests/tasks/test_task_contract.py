"""One contract, every task (services/tasks/): the digits MLP, the image-folder CNN, the CSV
classifier and the text module task all go through the same path. For each: the wire types are
derived from TFF's type signature, a client's result round-trips through the server's staging
into the aggregate bit for bit, and the task's contract fingerprint is stable across builds but
differs when any part of the task differs. A client whose task differs is refused at join, and
both sides say which parts differ."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_federated.python.core.impl.types import type_conversions

from services.client.session import OtherTask, Session
from services.common.config import FederationConfig, from_mapping
from services.common.proto import federation_pb2 as pb
from services.common.proto import federation_pb2_grpc as pb_grpc
from services.server.aggregation import Slots
from services.server.aggregation.mean import Mean
from services.server.coordinator import Coordinator
from services.server.servicer import FederationServicer, add_to_server
from services.server.telemetry import Telemetry
from services.tasks import FederatedTask, federated_task
from services.tasks.contract import Contract

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = {"source": "files", "path": "/nonexistent"}  # the data is not read here
TASKS: dict[str, dict] = {
    "digits": {},
    "cnn": {"task": {"source": str(EXAMPLES / "digits_cnn_images" / "task.yaml")}, "data": FILES},
    "csv": {"task": {"source": str(EXAMPLES / "breast_cancer_csv" / "task.yaml")}, "data": FILES},
    "text": {"task": {"source": "module:examples.text_module.task"}, "data": FILES},
}


def config(name: str, **training: object) -> FederationConfig:
    return from_mapping({**TASKS[name], "training": training})


@pytest.fixture(scope="module", params=sorted(TASKS))
def named(request: pytest.FixtureRequest) -> tuple[str, FederatedTask]:
    return request.param, federated_task(config(request.param))


def test_wire_types_are_derived_from_tffs_type_signature(named: tuple[str, FederatedTask]) -> None:
    _, task = named
    weights = task.initial_weights()
    assert str(type_conversions.infer_type(weights)) == str(task.weights_type)
    model = task.keras_model()
    assert [leaf.shape for leaf in task.weights_layout.leaves] == \
        [tuple(v.shape) for v in [*model.trainable_variables, *model.non_trainable_variables]]
    # ClientResult: a delta per trainable variable, then the weight
    assert len(task.result_layout.leaves) == len(model.trainable_variables) + 1


def test_a_result_round_trips_through_staging_bit_for_bit(named: tuple[str, FederatedTask]) -> None:
    _, task = named
    layout = task.result_layout
    rng = np.random.default_rng(0)
    update = [rng.standard_normal(leaf.shape).astype(leaf.dtype) for leaf in layout.leaves[:-1]]
    data = bytes(layout.encode([*update, np.float32(1.0)]))
    rnd = Mean(layout, Slots(1)).open_round(Mean(layout, Slots(1)).initial_state())
    upload = rnd.receive("c", 1.0, timeout=10)
    for i in range(0, len(data), 1000):
        upload.feed(data[i : i + 1000])
    upload.finish()
    rnd.commit(upload)
    got = rnd.finish().update
    for ours, sent in zip(got, update, strict=True):
        np.testing.assert_array_equal(ours, sent)  # the weighted mean of one result is that result


def test_the_contract_is_stable_across_builds(named: tuple[str, FederatedTask]) -> None:
    """Keras names layers by how many were built before (dense_3): the contract leaves names out."""
    name, task = named
    again = federated_task(config(name))
    again.keras_model()  # another model built in this process first
    assert again.contract == task.contract


@pytest.fixture(scope="module")
def contracts() -> dict[str, Contract]:
    return {name: federated_task(config(name)).contract for name in TASKS}


def test_every_task_has_its_own_fingerprint(contracts: dict[str, Contract]) -> None:
    assert len({c.fingerprint for c in contracts.values()}) == len(TASKS)


@pytest.mark.parametrize(("change", "part"), [
    (lambda: config("digits", client_learning_rate=0.05), "client_training"),
    (lambda: config("digits", algorithm="fedprox"), "client_training"),
    (lambda: from_mapping({"model": {"hidden_units": 16}}), "architecture"),
])
def test_a_changed_part_changes_the_fingerprint_and_is_named(change: Callable[[], FederationConfig], part: str,
                                                             contracts: dict[str, Contract]) -> None:
    other = federated_task(change()).contract
    assert other.fingerprint != contracts["digits"].fingerprint
    differs = contracts["digits"].differences(other.parts)
    assert any(d.startswith(part) for d in differs)


def test_loss_metrics_and_label_are_parts_of_the_contract(tmp_path: Path, contracts: dict[str, Contract]) -> None:
    source = (EXAMPLES / "breast_cancer_csv" / "task.yaml").read_text()
    (tmp_path / "model.json").write_text((EXAMPLES / "breast_cancer_csv" / "model.json").read_text())
    variants = {"loss": source.replace("from_logits: true", "from_logits: false"),
                "metrics": source.replace("metrics: [accuracy]", "metrics: []"),
                "label": source.replace("classes: 2", "classes: 3")}
    for part, text in variants.items():
        (tmp_path / "task.yaml").write_text(text)
        cfg = from_mapping({"task": {"source": str(tmp_path / "task.yaml")}, "data": FILES})
        differs = contracts["csv"].differences(federated_task(cfg).contract.parts)
        assert [d.split(" ")[0] for d in differs] == [part], (part, differs)


@pytest.fixture()
def server(contracts: dict[str, Contract]) -> Iterator[str]:
    coordinator = Coordinator(min_clients=1, clients_per_round=1, round_deadline_s=5, num_shards=1,
                              rng=np.random.default_rng(0))
    servicer = FederationServicer(coordinator, None, Telemetry(connected=lambda: 0),  # type: ignore[arg-type]
                                  chunk_bytes=1 << 16, max_payload_bytes=1 << 20, contract=contracts["digits"])
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        grpc_server.stop(grace=None)


def session(address: str) -> Session:
    return Session(from_mapping({"client": {"server_address": address},
                                 "security": {"tls": False, "token_file": None}}), "client-0")


def test_a_client_with_another_task_is_refused_at_join_naming_the_parts(
        server: str, contracts: dict[str, Contract]) -> None:
    s = session(server)
    try:
        with pytest.raises(OtherTask) as err:
            s.join(contracts["csv"].parts)
        said = str(err.value)
        assert "differs from the server's in" in said
        for part in ("architecture", "input", "label"):
            assert f"{part} (server {contracts['digits'].parts[part]}, client {contracts['csv'].parts[part]})" in said
        assert s.join(contracts["digits"].parts).client_id  # the same task joins
    finally:
        s.close()


def test_a_malformed_contract_is_invalid(server: str) -> None:
    with grpc.insecure_channel(server) as ch:
        stub = pb_grpc.FederationStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Join(pb.JoinRequest(name="x", task={"architecture": "not-a-hash"}), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_training_settings_other_than_the_clients_leave_the_contract_alone(contracts: dict[str, Contract]) -> None:
    server_side = federated_task(config("digits", server_optimizer="adam", rounds=99)).contract
    assert server_side == contracts["digits"]


def test_weights_layout_is_part_of_the_contract(contracts: dict[str, Contract]) -> None:
    assert contracts["digits"].parts["weights"] != contracts["cnn"].parts["weights"]
    assert len(contracts["digits"].parts) == 7
