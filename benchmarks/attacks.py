"""k of 53 devices malicious: detection F1 and the global threshold, per aggregator, beside no attack.

The holdout protocol of ``fl-app evaluate`` (``core.quality``: each device's
series split in time, 70 % trains) run in-process on a cut-down budget: the
generated data set's first ``--records`` readings (40,000 of 152,533: ~550
training rows a device) and ``--rounds`` rounds (10, not the evaluation's 20).
Every round each device runs the live step (``core.model.train_locally`` from
the global weights, its seed ``client_seed``) and
:class:`server.aggregation.TimedAggregation` aggregates the 53 updates. After
the last round each device sends the final model's score histogram of its
training rows and the threshold is :func:`server.robust.global_threshold` of
them; F1 is scored on every device's held-out part (the malicious devices'
readings too: the same readings in every row).

The ``k`` malicious devices (a seeded sample, the same for every aggregator) send:

- ``scaled``: their trained weights x 10;
- ``sign flip``: their trained weights negated;
- ``inflated count``: 10^6 examples, and their own update reversed and 2.5 times as long
  (``global - 2.5 (trained - global)``: inside the distance bound of 3 x the typical, so only
  the weight cap stands in its way);
- ``histogram high`` / ``low``: honest weights, and a final histogram of 10^12 scores
  in the top (1e5) or the bottom (1e-5) bin (the weights are those of the
  no-attack run: the holdout trains without a threshold).

Aggregators: ``undefended`` (FedAvg, every device believed, the pooled threshold:
the code before ``fl.aggregator``, whose fixed norm bound of 100 none of these
attacks reaches), and ``fedavg``, ``trimmed_mean``, ``median`` with the configured
bounds (``fl.trim_fraction``, ``fl.max_distance_factor``, ``fl.max_weight_factor``).

    python -m benchmarks attacks [--records 40000] [--rounds 10] [--ks 1 5 10] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from core import dataset, features, model, quality, summaries
from core.config import AppConfig, load_config
from core.messages import LocalUpdate
from server import robust
from server.aggregation import GlobalState, TimedAggregation
from server.robust import Robustness

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("benchmarks.attacks")
ATTACKS = ("none", "scaled", "sign flip", "inflated count", "histogram high", "histogram low")
WEIGHT_ATTACKS = ("scaled", "sign flip", "inflated count")  # the others change only the final histograms
AGGREGATORS = ("undefended", "fedavg", "trimmed_mean", "median")
CLAIM = 1_000_000  # examples an attacker claims
SCORES_CLAIMED = 1e12  # scores in an attacker's histogram: > 99.9 % of the pool, to reach 1e-5 too
REVERSED = 2.5  # how far back along its own update an inflated-count attacker sends the model


@dataclass
class Row:
    aggregator: str
    attack: str
    k: int
    f1: float
    precision: float
    recall: float
    threshold: float
    rejected_malicious: int  # updates of malicious devices rejected, over all rounds
    rejected_honest: int
    attacker_distance: float  # median distance of a malicious update to the global weights (last round)
    seconds: float


def robustness(name: str, cfg: AppConfig) -> Robustness:
    return Robustness.none() if name == "undefended" else replace(Robustness.of(cfg.fl), aggregator=name)


def attack_update(kind: str, update: LocalUpdate, state: GlobalState) -> LocalUpdate:
    """What a malicious device sends instead of ``update`` (its honest one) in a training round."""
    if kind == "scaled":
        update.weights = [w * np.float32(10) for w in update.weights]
    elif kind == "sign flip":
        update.weights = [-w for w in update.weights]
    elif kind == "inflated count":
        update.weights = [(g - REVERSED * (w - g)).astype(w.dtype)
                          for g, w in zip(state.weights, update.weights, strict=True)]
        update.num_examples = CLAIM
    return update


def attack_histogram(kind: str) -> list[float] | None:
    counts = np.zeros(len(summaries.HISTOGRAM_EDGES) - 1)
    if kind == "histogram high":
        counts[-1] = SCORES_CLAIMED
    elif kind == "histogram low":
        counts[0] = SCORES_CLAIMED
    else:
        return None
    return counts.tolist()


def train(cfg: AppConfig, partitions: list[quality.Partition], rounds: int, robust_: Robustness, attack: str,
          malicious: set[int]) -> tuple[GlobalState, int, int, float]:
    """``rounds`` holdout rounds of every device; the final state, rejected (malicious, honest), and the
    malicious updates' median distance in the last round."""
    spec, fl = cfg.fl.model, cfg.fl
    aggregation = TimedAggregation(1, 0, spec.threshold_quantile, features.normalised_width(spec), robust_)
    state = GlobalState(0, model.get_weights(model.build(spec)), math.inf)
    bad = good = 0
    distances: list[float] = []
    for _ in range(rounds):
        updates, distances = [], []
        for p in partitions:
            result = model.train_locally(spec, state.weights, state.normalisation(),
                                         model.ReplayBuffer(len(p.train), p.train.shape[1]), p.train, fl.local_epochs,
                                         seed=model.client_seed(spec, state.round, p.device))
            update = LocalUpdate(p.device, state.round, len(p.train), result.weights,
                                 {"loss": result.loss, "score-mean": result.score_mean}, result.histogram,
                                 threshold=result.threshold, moments=result.moments.to_list())
            if p.device in malicious and attack in WEIGHT_ATTACKS:
                update = attack_update(attack, update, state)
                distances.append(robust.distance(update.weights, state.weights))
            updates.append(update)
        outcome = aggregation.aggregate_round(updates, state)
        bad += sum(u.device_id in malicious for u, _ in outcome.rejected)
        good += sum(u.device_id not in malicious for u, _ in outcome.rejected)
        if outcome.state is None:
            raise RuntimeError(f"round {state.round + 1} did not aggregate: {outcome.reason}")
        state = outcome.state
    return state, bad, good, float(np.median(distances)) if distances else math.nan


def detection(cfg: AppConfig, partitions: list[quality.Partition], state: GlobalState, robust_: Robustness,
              attack: str, malicious: set[int]) -> quality.Scores:
    """The final model's threshold from every device's histogram (attackers' crafted), and its scores."""
    spec = cfg.fl.model
    norm = state.normalisation()
    assert norm is not None, "every round adds the devices' moments"
    net = model.build(spec)
    model.set_weights(net, state.weights)
    crafted = attack_histogram(attack)
    histograms = [crafted if crafted is not None and p.device in malicious else
                  summaries.histogram_of(model.scores(net, norm.inputs(p.train))) for p in partitions]
    threshold = robust.global_threshold(histograms, spec.threshold_quantile, robust_)
    return quality.scored(net, norm, threshold, partitions)


def run(cfg: AppConfig, rounds: int, ks: list[int]) -> list[Row]:
    frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
    partitions = quality.split(frame, cfg.fl.model, 0.7)
    devices = [p.device for p in partitions]
    order = [int(d) for d in np.random.default_rng(cfg.fl.model.seed).permutation(devices)]
    log.info("%d readings, %d devices, %d held-out anomalies; %d rounds", len(frame), len(devices),
             sum(int(p.test_labels.sum()) for p in partitions), rounds)
    rows: list[Row] = []
    total = len(AGGREGATORS) * (1 + len(WEIGHT_ATTACKS) * len(ks))
    done = 0
    for name in AGGREGATORS:
        robust_ = robustness(name, cfg)
        for attack in ("none", *WEIGHT_ATTACKS):
            for k in ([0] if attack == "none" else ks):
                malicious = set(order[:k])
                started = time.monotonic()
                state, bad, good, far = train(cfg, partitions, rounds, robust_, attack, malicious)
                trained = time.monotonic() - started
                done += 1
                first = len(rows)
                for kind, kk in ([(attack, k)] if attack != "none" else
                                 [("none", 0), *((h, k2) for h in ("histogram high", "histogram low") for k2 in ks)]):
                    scores = detection(cfg, partitions, state, robust_, kind, set(order[:kk]))
                    rows.append(Row(name, kind, kk, scores.f1, scores.precision, scores.recall, scores.threshold,
                                    bad if kind == attack else 0, good, far if kind == attack else math.nan,
                                    time.monotonic() - started))
                log.info("[%d/%d] %s, %s, k=%d: F1 %.3f, threshold %.3g, rejected %d malicious %d honest (%.0f s)",
                         done, total, name, attack, k, rows[first].f1, rows[first].threshold, bad, good, trained)
    return rows


def table(rows: list[Row], ks: list[int]) -> Table:
    out = Table(title="detection F1 (global threshold) with k of the devices malicious")
    out.add_column("attack")
    out.add_column("k", justify="right")
    for name in AGGREGATORS:
        out.add_column(name, justify="right")
    by = {(r.aggregator, r.attack, r.k): r for r in rows}
    for attack in ATTACKS:
        for k in ([0] if attack == "none" else ks):
            cells = []
            for name in AGGREGATORS:
                r = by[(name, attack, k)]
                rejected = f" r{r.rejected_malicious}/{r.rejected_honest}" \
                    if r.rejected_malicious or r.rejected_honest else ""
                cells.append(f"{r.f1:.3f} ({r.threshold:.3g}){rejected}")
            out.add_row(attack, str(k), *cells)
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks attacks", description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=40_000, help="readings of the generated data set")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (KEY=VALUE)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    cfg = load_config([f"stream.dataset_records={args.records}", *args.overrides])
    started = time.monotonic()
    rows = run(cfg, args.rounds, args.ks)
    console = Console(width=200)
    console.print(table(rows, args.ks))
    console.print(f"cells: F1 (threshold) r<malicious>/<honest> updates rejected over {args.rounds} rounds; "
                  f"{time.monotonic() - started:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "attacks.json"
    path.write_text(json.dumps({"records": args.records, "rounds": args.rounds, "ks": args.ks,
                                "overrides": args.overrides, "rows": [asdict(r) for r in rows]}, indent=1))
    console.print(f"rows in {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
