"""The client process: join, then train each round it is sampled for on its own data only, until
the server says training is done (exit 0)."""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Callable

import grpc

from services.client import secure_exchange
from services.client.secure import SecureProtocolError
from services.client.session import Joined, Session
from services.client.trainer import ClientTrainer, ClientUpdate
from services.common.config import FederationConfig
from services.common.logs import fields
from services.common.proto import federation_pb2 as pb
from services.tasks import FederatedTask, federated_task
from services.tasks.sources import ClientData, client_data

log = logging.getLogger(__name__)


class FederationClient:
    def __init__(self, cfg: FederationConfig, name: str | None = None, task: FederatedTask | None = None,
                 update: ClientUpdate | None = None, on_reachable: Callable[[bool], None] | None = None) -> None:
        self.cfg = cfg
        # Shared by the simulator's sessions; built once for this client otherwise.
        self.task = task or federated_task(cfg)
        self.update = update or ClientUpdate(self.task)
        self.name = name or cfg.client.name or socket.gethostname()
        self.session = Session(cfg, self.name, on_reachable)
        self.rounds_trained = 0

    def run(self) -> None:
        """Returns when the server says training is done; raises Stopped / ServerGone otherwise."""
        # Own (unsharded) data is read and checked before joining: a client with bad data never
        # reaches the server. A shard is known once the server assigned it at join.
        own = None if self._sharded else client_data(self.cfg, self.task, 0, 1)
        joined = self.session.join(self.task.contract.parts)
        trainer = self._trainer(own or client_data(self.cfg, self.task, joined.shard_index, joined.num_shards))
        log.info("joined", extra=fields(client=self.name, client_id=joined.client_id, shard=joined.shard_index))
        while True:
            try:
                header, weights = self.session.get_task(joined.client_id)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                joined, trainer = self._rejoin(joined, trainer)
                continue
            if header.kind == pb.TaskHeader.DONE:
                log.info("training done", extra=fields(rounds_trained=self.rounds_trained))
                return
            if header.kind != pb.TaskHeader.TRAIN:
                continue
            try:
                if header.HasField("secure"):  # masked, with the key phases around it
                    trained = secure_exchange.take_part(self.session, joined.client_id, header,
                                                        trainer.result_layout,
                                                        functools.partial(trainer.train, header.layout, weights))
                else:
                    trained = trainer.train(header.layout, weights, evaluate=header.evaluate)
                    del weights  # the model buffer: free it before the upload
                    self.session.submit(joined.client_id, header, trained, trainer.result_layout.fingerprint)
                self.rounds_trained += 1
                log.info("result sent", extra=fields(round=header.round, **trained.metrics))
            except SecureProtocolError as exc:
                log.warning("secure round abandoned: the server broke the protocol",
                            extra=fields(round=header.round, why=str(exc)))
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    joined, trainer = self._rejoin(joined, trainer)
                elif err.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS) \
                        or header.HasField("secure"):  # a secure phase is not retried: the round goes on without it
                    log.warning("result not used", extra=fields(round=header.round, why=err.details()))
                else:
                    raise

    @property
    def _sharded(self) -> bool:
        d = self.cfg.data
        return d.source == "digits" or (d.source == "files" and d.sharded)

    def _trainer(self, data: ClientData) -> ClientTrainer:
        return ClientTrainer(self.cfg, data.train, self.task, self.update, data.eval)

    def _rejoin(self, joined: Joined, trainer: ClientTrainer) -> tuple[Joined, ClientTrainer]:
        """The server restarted and forgot this client id: join again (same name, same shard)."""
        again = self.session.join(self.task.contract.parts)
        if self._sharded and (again.shard_index != joined.shard_index or again.num_shards != joined.num_shards):
            trainer = self._trainer(client_data(self.cfg, self.task, again.shard_index, again.num_shards))
        log.info("rejoined", extra=fields(client_id=again.client_id, shard=again.shard_index))
        return again, trainer
