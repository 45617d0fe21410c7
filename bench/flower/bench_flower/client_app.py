"""ClientApp: trivial local work, the same as the other baselines: weights + a per-node constant.

The constant differs per node so that updates are distinct bytes (Flower stores identical
chunks once, which would flatter it). The time spent on that work is reported as `work-s`.

With the run config's `secagg = true` the train function runs inside Flower's `secaggplus_mod`,
which speaks the legacy FitIns/FitRes records (the server's SecAggPlusWorkflow drives the legacy
strategy API) and answers the protocol's other stages itself; `mask-s` is then the time of the
mod's masking stage (quantize + masks) minus the local work.
"""

import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat

app = ClientApp()


def _work(weights: list, context: Context) -> tuple[list, float]:
    t0 = time.perf_counter()
    delta = 1e-3 * (context.node_id % 997 + 1)
    updated = [w + delta for w in weights]
    return updated, time.perf_counter() - t0


def secagg_if_configured(msg: Message, context: Context, call_next) -> Message:
    """`secaggplus_mod` when the run config says `secagg = true`, else the plain call."""
    if not context.run_config["secagg"]:
        return call_next(msg, context)
    stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
    t0 = time.perf_counter()
    reply = secaggplus_mod(msg, context, call_next)
    if stage == Stage.COLLECT_MASKED_VECTORS and not reply.has_error():
        metrics = reply.content.config_records["fitres.metrics"]
        metrics["mask-s"] = time.perf_counter() - t0 - float(metrics["work-s"])
    return reply


@app.train(mods=[secagg_if_configured])
def train(msg: Message, context: Context) -> Message:
    if context.run_config["secagg"]:
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=False)
        updated, work = _work(parameters_to_ndarrays(fitins.parameters), context)
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(updated), num_examples=1,
                        metrics={"work-s": work})
        return Message(content=compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)
    updated, work = _work(msg.content["arrays"].to_numpy_ndarrays(), context)
    content = RecordDict(
        {"arrays": ArrayRecord(updated), "metrics": MetricRecord({"num-examples": 1, "work-s": work})}
    )
    return Message(content=content, reply_to=msg)
