"""The learning-quality experiment (`fl-app evaluate`): the same model and budget trained federated,
centrally and per device alone, beside peer detectors a user could pick instead, under two protocols:

- **holdout** (:mod:`core.quality`): each device's series split in time; the
  federated row runs the evaluation apps on Flower's simulation runtime;
- **prequential** (:mod:`fl_app.federation.prequential`): the stream replayed in
  windows of the local interval, each scored, then trained on, aggregated on the clock.

Peers (:mod:`fl_app.federation.peers`, the ``eval`` dependency group) get the
same split and the same sensor fields, with label-free thresholds.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import pandas as pd

from core import dataset, model, quality
from core.config import AppConfig
from fl_app.federation.simulation import run_apps

log = logging.getLogger(__name__)
PROTOCOLS = ("holdout", "prequential")
T = TypeVar("T")


@dataclass
class Evaluation:
    """What `fl-app evaluate` measured: per protocol, the scores and seconds of each approach."""

    results: dict[str, dict[str, quality.Scores]]  # protocol -> approach -> scores
    seconds: dict[str, dict[str, float]]
    local_mean_f1: float  # holdout: the mean of the devices' own local F1
    readings: int
    devices: int

    def to_json(self) -> dict[str, object]:
        """The measurements as `fl-app evaluate --json` writes them."""
        return {"readings": self.readings, "devices": self.devices, "local_mean_f1": self.local_mean_f1,
                "results": {p: {k: asdict(v) for k, v in r.items()} for p, r in self.results.items()},
                "seconds": self.seconds}


def _timed(seconds: dict[str, float], name: str, call: Callable[[], T]) -> T:
    started = time.monotonic()
    out = call()
    seconds[name] = time.monotonic() - started
    return out


def evaluate(cfg: AppConfig, rounds: int, local_epochs: int, train_fraction: float,
             protocols: tuple[str, ...] = PROTOCOLS, peers: bool = True) -> Evaluation:
    """Every approach (and the peers, unless ``peers`` is False) under each of ``protocols``."""
    frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
    if peers:
        from fl_app.federation import peers as peer_detectors

        peer_detectors.require()  # before minutes of training: the eval group may be missing
    results: dict[str, dict[str, quality.Scores]] = {}
    seconds: dict[str, dict[str, float]] = {}
    local_mean = float("nan")
    if "holdout" in protocols:
        partitions = quality.split(frame, cfg.fl.model, train_fraction)
        results["holdout"], seconds["holdout"], local_mean = holdout(cfg, frame, partitions, rounds, local_epochs,
                                                                     train_fraction, peers)
    if "prequential" in protocols:
        results["prequential"], seconds["prequential"] = prequential(cfg, frame, peers)
    return Evaluation(results, seconds, local_mean, len(frame), int(frame["device_id"].nunique()))


def holdout(cfg: AppConfig, frame: pd.DataFrame, partitions: list[quality.Partition], rounds: int, local_epochs: int,
            train_fraction: float, peers: bool) -> tuple[dict[str, quality.Scores], dict[str, float], float]:
    from clients.evaluation_app import app as client_app
    from server.evaluation_app import app as server_app

    spec = cfg.fl.model
    seconds: dict[str, float] = {}
    results: dict[str, quality.Scores] = {}
    Path(cfg.paths.run_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cfg.paths.run_dir) as tmp:
        quality.save_partitions(partitions, Path(tmp))
        settings = quality.EvaluationSettings(tmp, [p.device for p in partitions], rounds, local_epochs,
                                              asdict(spec), str(Path(tmp) / "result.npz"))
        log.info("holdout, federated: %d devices, %d rounds x %d epoch(s) on the simulation runtime",
                 len(partitions), rounds, local_epochs)
        started = time.monotonic()
        run_apps(server_app, client_app, len(partitions), settings.to_env(), log_to_driver=False)
        if not Path(settings.result_path).exists():
            raise RuntimeError("the federated evaluation ended without a result (see the log above)")
        result = quality.FederatedResult.load(settings.result_path)
    seconds["federated"] = seconds["federated per-device"] = time.monotonic() - started
    net = model.build(spec)
    model.set_weights(net, result.weights)
    results["federated"] = quality.scored(net, result.normalisation, result.threshold, partitions)
    results["federated per-device"] = quality.scored(net, result.normalisation, result.device_thresholds,
                                                     partitions)
    log.info("holdout, central and local")
    results["central"] = _timed(seconds, "central", lambda: quality.central(partitions, spec, rounds * local_epochs))
    results["local"], local_mean = _timed(seconds, "local",
                                          lambda: quality.local(partitions, spec, rounds * local_epochs))
    if peers:
        from fl_app.federation import peers as peer_detectors

        for name, run in peer_detectors.HOLDOUT.items():
            log.info("holdout, peer %s", name)
            results[name] = _timed(seconds, name, lambda run=run: run(  # type: ignore[misc]
                frame, list(spec.features), train_fraction, spec.threshold_quantile))
    return results, seconds, local_mean


def prequential(cfg: AppConfig, frame: pd.DataFrame, peers: bool) -> tuple[dict[str, quality.Scores],
                                                                          dict[str, float]]:
    from fl_app.federation import prequential as stream_protocol

    seconds: dict[str, float] = {}
    results = _timed(seconds, "federated", lambda: stream_protocol.evaluate(cfg, frame))
    for name in results:
        seconds[name] = seconds["federated"]  # one loop runs all four
    if peers:
        from fl_app.federation import peers as peer_detectors

        for name, run in peer_detectors.PREQUENTIAL.items():
            log.info("prequential, peer %s", name)
            results[name] = _timed(seconds, name, lambda run=run: run(  # type: ignore[misc]
                frame, list(cfg.fl.model.features), stream_protocol.warmup_readings(cfg),
                cfg.fl.model.threshold_quantile))
    return results, seconds
