"""The learning-quality experiment (`fl-app evaluate`): the same model and budget trained federated
(the evaluation apps on Flower's simulation runtime), centrally, and per device alone; see
:mod:`core.quality` for the protocol."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from core import dataset, model, quality
from core.config import AppConfig
from fl_app.federation.simulation import run_apps

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What `fl-app evaluate` measured: scores per approach and the mean of the devices' own local F1."""

    results: dict[str, quality.Scores]
    local_mean_f1: float
    readings: int
    devices: int
    seconds: dict[str, float]

    def to_json(self) -> dict[str, object]:
        """The measurements as `fl-app evaluate --json` writes them."""
        return {"readings": self.readings, "devices": self.devices,
                "results": {k: asdict(v) for k, v in self.results.items()},
                "local_mean_f1": self.local_mean_f1, "seconds": self.seconds}


def evaluate(cfg: AppConfig, rounds: int, local_epochs: int, train_fraction: float) -> Evaluation:
    """Federated (evaluation apps on Flower's simulation runtime), central and local, on the data set."""
    from clients.evaluation_app import app as client_app
    from server.evaluation_app import app as server_app

    spec = cfg.fl.model
    frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
    partitions = quality.split(frame, spec, train_fraction)
    seconds: dict[str, float] = {}
    results: dict[str, quality.Scores] = {}
    Path(cfg.paths.run_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cfg.paths.run_dir) as tmp:
        quality.save_partitions(partitions, Path(tmp))
        settings = quality.EvaluationSettings(tmp, [p.device for p in partitions], rounds, local_epochs,
                                              asdict(spec), str(Path(tmp) / "result.npz"))
        log.info("federated: %d devices, %d rounds x %d epoch(s) on the simulation runtime", len(partitions),
                 rounds, local_epochs)
        started = time.monotonic()
        run_apps(server_app, client_app, len(partitions), settings.to_env(), log_to_driver=False)
        if not Path(settings.result_path).exists():
            raise RuntimeError("the federated evaluation ended without a result (see the log above)")
        weights, threshold = quality.load_result(settings.result_path)
    seconds["federated"] = time.monotonic() - started
    net = model.build(spec)
    model.set_weights(net, weights)
    results["federated"] = quality.scored(net, threshold, partitions)
    started = time.monotonic()
    results["central"] = quality.central(partitions, spec, rounds * local_epochs)
    seconds["central"] = time.monotonic() - started
    started = time.monotonic()
    results["local"], local_mean = quality.local(partitions, spec, rounds * local_epochs)
    seconds["local"] = time.monotonic() - started
    return Evaluation(results, local_mean, len(frame), len(partitions), seconds)
