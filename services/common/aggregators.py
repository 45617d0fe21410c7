"""The aggregators a federation can name (``training.aggregator``), each with the class that
implements it on the server. The config schema's choices, the local runner's ``--aggregator``
choices and the README's list are this table; the server imports the implementation it names only
when it builds it (services/server/aggregation.aggregator_for), so this module, like the config
schema that imports it, stays free of the server package and of TensorFlow.

A new aggregator is its own module under services/server/aggregation (an ``Aggregator`` subclass;
``from_settings`` if it reads more of the training settings than the layout and the upload
slots) plus one line here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

AGGREGATORS: dict[str, str] = {  # name -> "module:Class" of its services.server.aggregation.Aggregator
    "mean": "services.server.aggregation.mean:Mean",
    "robust": "services.server.aggregation.robust:Robust",
    "dp": "services.server.aggregation.dp:DifferentiallyPrivate",
    "secure": "services.server.aggregation.secure:SecureAggregator",
}
DEFAULT = "mean"

if TYPE_CHECKING:  # a type checker needs the names spelled out; the schema builds its choices from the table
    AggregatorName = str
else:
    AggregatorName = Literal[tuple(AGGREGATORS)]
