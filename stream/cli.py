"""The stream's commands: ``fl-app produce`` (the replay producer) and ``fl-app flink`` (the job),
each in the foreground; ``fl-app run`` starts both (``stream/component.py``)."""

from __future__ import annotations

import sys

import typer

from core.commands import command, console
from core.config import AppConfig

app = typer.Typer()


@command(app, log="kafka_producer")
def produce(cfg: AppConfig) -> None:
    """Replay the data set into Kafka (iot_stream) at stream.records_per_second."""
    import logging
    import signal

    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    from core import dataset
    from stream.producer import Position, ProduceStats, ReplayProducer

    frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
    producer = ReplayProducer(cfg, frame, dataset.dataset_id(cfg.stream))
    size = len(frame)
    del frame  # the producer keeps its own arrays; the table would stay for the whole run
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: producer.stop())
    log = logging.getLogger("stream.producer")
    with Progress(TextColumn("[bold]producing[/]"), TimeElapsedColumn(), TextColumn("{task.description}"),
                  console=console, transient=False, disable=not console.is_terminal) as progress:
        task = progress.add_task("", total=None)
        last_log = [0.0]

        def on_progress(stats: ProduceStats, pos: Position) -> None:
            progress.update(task, description=(
                f"sent {stats.sent:,}  acked {stats.delivered:,}  {stats.rate:,.1f} rec/s  "
                f"loop {pos.loop}  position {pos.seq:,}/{size:,}"))
            if stats.elapsed - last_log[0] >= 10:  # a line in the log every 10 s
                last_log[0] = stats.elapsed
                log.info("sent %d, acked %d, %.1f rec/s, loop %d position %d/%d",
                         stats.sent, stats.delivered, stats.rate, pos.loop, pos.seq, size)

        stats = producer.run(on_progress)
    end = stats.end or Position()
    console.print(f"sent {stats.sent:,} readings ({stats.delivered:,} acknowledged, {stats.resent} re-sent) "
                  f"in {stats.elapsed:.1f}s = {stats.rate:,.1f} rec/s; next: loop {end.loop} seq {end.seq}")


@command(app, log="flink_launcher")
def flink(cfg: AppConfig) -> None:
    """Run the Flink job (validate, store, per-device windows) in the foreground.

    It runs in its own environment (.venv-flink) and resumes from its last
    retained checkpoint if there is one.
    """
    import os

    from stream.flink import launch

    argv, env = launch.prepare(cfg)
    sys.stdout.flush()
    os.execve(argv[0], argv, env)  # same pid: `fl-app run` supervises the job itself
