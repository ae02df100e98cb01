"""The ServerApp of `fl-app evaluate`: fixed rounds of this project's aggregation, as fast as replies come.

Each round every device (all nodes of the simulation) trains the global model
on its training rows and :meth:`server.aggregation.TimedAggregation.aggregate_round`
(the live ServerApp's validation and FedAvg averaging) makes the next global
model. No clock: the evaluation measures what the aggregation learns, not
the timing. After the last round one evaluate message collects the devices'
score histograms and own quantiles of the final model: the pooled quantile
is its global threshold (the live server's rule, without its one-round lag),
the devices' own ones its per-device thresholds. Weights, normalisation and thresholds go
to ``result_path`` for ``fl-app evaluate`` to score on the held-out data.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from core import model, quality, summaries
from core.features import normalised_width
from core.messages import LocalUpdate
from server.aggregation import GlobalState, TimedAggregation
from server.robust import Robustness

log = logging.getLogger("server.evaluation")
REPLY_TIMEOUT = 600.0  # seconds for one round's replies

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = quality.EvaluationSettings.from_env()
    spec = settings.model_config()
    # Every device believed, as before fl.aggregator (the evaluation does not carry it yet).
    aggregation = TimedAggregation(min_devices=1, max_staleness_rounds=0, threshold_quantile=spec.threshold_quantile,
                                   normalised_columns=normalised_width(spec), robust=Robustness.none())
    state = GlobalState(0, model.get_weights(model.build(spec)), math.inf)
    nodes = _wait_for_nodes(grid, len(settings.devices))
    for _ in range(settings.rounds):
        instruction = state.instruction(settings.local_epochs)
        outcome = aggregation.aggregate_round(_ask(grid, nodes, instruction.to_record(), MessageType.TRAIN), state)
        if outcome.state is None:
            raise RuntimeError(f"evaluation round {state.round + 1} did not aggregate: {outcome.reason}")
        state = outcome.state
        log.info("evaluation round %d/%d: %d devices, mean loss %.5f", state.round, settings.rounds,
                 len(outcome.accepted), outcome.metrics.get("loss", float("nan")))
    norm = state.normalisation()
    assert norm is not None, "every round adds the devices' moments"
    replies = _ask(grid, nodes, state.instruction(0).to_record(), MessageType.EVALUATE)
    threshold = summaries.histogram_quantile(np.sum([u.histogram for u in replies], axis=0), spec.threshold_quantile)
    quality.FederatedResult(state.weights, norm, threshold, {u.device_id: u.threshold for u in replies}).save(
        settings.result_path)


def _wait_for_nodes(grid: Grid, expected: int, timeout: float = 120.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {expected} devices came online")
        time.sleep(0.5)
    return nodes


def _ask(grid: Grid, nodes: list[int], content: RecordDict, kind: str) -> list[LocalUpdate]:
    """Send ``content`` to every node and wait for all replies; a missing or failed reply is an error."""
    replies = list(grid.send_and_receive([Message(content, dst_node_id=n, message_type=kind) for n in nodes],
                                         timeout=REPLY_TIMEOUT))
    failed = [r.error.reason for r in replies if r.has_error()]
    if failed or len(replies) != len(nodes):
        raise RuntimeError(f"{len(replies)} of {len(nodes)} devices replied; errors: {failed[:3]}")
    return [LocalUpdate.from_record(r.content) for r in replies]
