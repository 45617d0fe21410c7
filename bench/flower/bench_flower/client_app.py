"""ClientApp: trivial local work, the same as the other baselines: weights + a per-node constant.

The constant differs per node so that updates are distinct bytes (Flower stores identical
chunks once, which would flatter it). The time spent on that work is reported as `work-s`.
"""

import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    weights = msg.content["arrays"].to_numpy_ndarrays()
    t0 = time.perf_counter()
    delta = 1e-3 * (context.node_id % 997 + 1)
    updated = [w + delta for w in weights]
    work = time.perf_counter() - t0
    content = RecordDict(
        {"arrays": ArrayRecord(updated), "metrics": MetricRecord({"num-examples": 1, "work-s": work})}
    )
    return Message(content=content, reply_to=msg)
