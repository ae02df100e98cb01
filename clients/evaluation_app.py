"""The ClientApp of `fl-app evaluate`: one device trains on its own training rows (simulation runtime).

Same training as the live ClientApp (``core.model.train`` from the global
weights it is sent, same message contract, ``core/messages.py``), but
its data is the device's fixed training partition
(``core.quality.save_partitions``) instead of a window stream, so
federated, central and local training see the same rows.

- train message: score histogram of the received model on the rows, then
  ``local-epochs`` passes; reply weights, examples, loss, histogram;
- evaluate message: the histogram only (for the final model's threshold).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from core import model, quality
from core.messages import LocalUpdate, TrainInstruction

app = ClientApp()


def _device_rows(context: Context) -> tuple[quality.EvaluationSettings, int, model.ReplayBuffer]:
    settings = quality.EvaluationSettings.from_env()
    device = settings.devices[int(context.node_config["partition-id"])]
    rows = quality.load_training_rows(settings.partitions_dir, device)
    return settings, device, model.ReplayBuffer(len(rows), rows.shape[1], rows)


@app.train()
def train(msg: Message, context: Context) -> Message:
    settings, device, buffer = _device_rows(context)
    spec = settings.model_config()
    instruction = TrainInstruction.from_record(msg.content)
    net = model.build(spec)
    model.set_weights(net, instruction.weights)
    histogram = model.score_histogram(net, buffer.rows)
    result = model.train(net, buffer, spec, epochs=instruction.local_epochs,
                         seed=model.client_seed(spec, instruction.server_round, device))
    update = LocalUpdate(device, instruction.server_round, len(buffer), model.get_weights(net),
                         {"loss": result.loss, "score-mean": result.score_mean}, histogram)
    return Message(update.to_record(), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    settings, device, buffer = _device_rows(context)
    instruction = TrainInstruction.from_record(msg.content)
    net = model.build(settings.model_config())
    model.set_weights(net, instruction.weights)
    update = LocalUpdate(device, instruction.server_round, len(buffer), [], {},
                         model.score_histogram(net, buffer.rows))
    return Message(update.to_record(), reply_to=msg)
