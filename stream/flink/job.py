"""The PyFlink stream job (runs in ``.venv-flink``; started by ``fl-app flink``).

::

    iot_stream (Kafka, via the official connector, offsets in checkpoints)
      -> validate ----- invalid --> iot_stream_dlq {reason, raw, topic, partition, offset, seen_at}
      |   valid
      +-> bulk store --> MongoDB device_data (insert, duplicates of event_id ignored:
      |                  a replay after a crash writes nothing twice)
      +-> key by device -> drop event ids the device has already seen (a producer
                           that crashed re-sends what it sent since its last saved
                           position) -> every window_seconds of processing time, the
                           device's new readings as one window record -> per-device
                           window topic, in that device's own partition

Both Kafka sinks are exactly-once (transactions committed at checkpoints), so
after a kill and a restart from the last checkpoint no window record and no
dead letter appears twice; readers use ``isolation.level=read_committed``.
Buffered readings, open windows and the ids each device has seen live in
keyed state, which is checkpointed: every reading is in exactly one committed
window, across a crash of the job or of the producer.

The Python operators run in the Flink environment (``.venv-flink``) in both
execution modes; the first one to open reports the interpreter and packages it
uses (``stream/flink/interpreter.py``), and the job logs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from pyflink.common import Configuration, Row, Time, Types
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import OutputTag, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import KafkaRecordSerializationSchema, KafkaSink
from pyflink.datastream.functions import KeyedProcessFunction, ProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, StateTtlConfig, ValueStateDescriptor
from pyflink.java_gateway import get_gateway
from pyflink.table import StreamTableEnvironment

from core.atomic import write_json
from core.records import DeadLetter, window_record
from core.storage import Storage
from core.validation import validate
from stream.flink import interpreter, session
from stream.flink.settings import JobSettings

log = logging.getLogger("stream.flink.job")
JOB_NAME = "fl-iot-stream"
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
OWN_PACKAGES = (PROJECT_ROOT / "core", PROJECT_ROOT / "stream")  # the only modules imported from the repo

DEAD_LETTER = OutputTag("dead-letter", Types.STRING())
WINDOW_ROW = Types.ROW([Types.INT(), Types.STRING(), Types.STRING()])  # partition, key, value


def _json(value: object, strict: bool = True) -> str:
    """Compact JSON. Strict (windows): what a consumer's parser takes, no NaN, raises on the rest;
    else (a dead letter's raw) anything, unknown types as their repr."""
    if strict:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    return json.dumps(value, separators=(",", ":"), default=repr)


def _iso_ms(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, tz=UTC).isoformat(timespec="milliseconds")


class Validate(ProcessFunction):
    """Valid readings go on as dicts; invalid ones to the dead-letter side output."""

    def __init__(self, settings: JobSettings) -> None:
        self.known = frozenset(settings.known_devices)
        self.ranges = {k: tuple(v) for k, v in settings.valid_ranges.items()}
        self.topic = settings.readings_topic
        self.counters: dict = {}
        self.env_root = flink_env_root(settings)
        self.report_path = settings.python_env_report

    def open(self, runtime_context: RuntimeContext) -> None:
        self.metrics = runtime_context.get_metrics_group().add_group("dead_letter")
        report = interpreter.describe(self.env_root, OWN_PACKAGES)
        write_json(self.report_path, report)
        log.log(logging.ERROR if report["foreign_modules"] else logging.INFO, "%s", interpreter.summary(report))

    def _count(self, reason: str) -> None:
        key = reason.replace(" ", "_").replace(":", "")
        if key not in self.counters:
            self.counters[key] = self.metrics.counter(key)
        self.counters[key].inc()

    def process_element(self, row, ctx):
        raw, partition, offset = row[0], row[1], row[2]
        try:
            reading, reason = validate(raw, self.known, self.ranges)
        except Exception as exc:  # noqa: BLE001 - validate never raises; if it did, the record is dead, not the job
            reading, reason = None, f"validation failed: {type(exc).__name__}"
        if reading is None:
            self._count(reason)
            yield DEAD_LETTER, dead_letter(reason, raw, self.topic, partition, offset)
        else:
            # The source position travels with the reading: a later step that cannot store or
            # send it dead-letters it with the same contract.
            yield reading, int(partition), int(offset)


def dead_letter(reason: str, raw: str | None, topic: str, partition: int, offset: int) -> str:
    return DeadLetter.of(reason, raw, topic, partition, offset).to_json().decode()


class BulkStore(KeyedProcessFunction):
    """Buffer readings in keyed state; write them to ``device_data`` in bulk (``Storage.insert_readings``).

    A bulk goes out when ``bulk_size`` readings wait or ``bulk_max_delay_ms``
    after the first of them. The buffer is checkpointed state, so a crash
    never drops a reading that Kafka offsets already count as processed.
    Inserts are unordered and a duplicate ``event_id`` (a replay) is skipped.
    A reading that cannot be stored (converted, encoded, accepted by the
    collection's validator) is dead-lettered with the reason and the rest of
    the bulk is stored: one record never restarts the job. Only a fault that
    is no record's (MongoDB unreachable) raises, and the job restarts from its
    last checkpoint with backoff.
    """

    def __init__(self, settings: JobSettings) -> None:
        self.topic = settings.readings_topic
        self.uri, self.database = settings.mongo_uri, settings.mongo_database
        self.bulk_size, self.delay = settings.bulk_size, settings.bulk_max_delay_ms
        self.timeout_ms = settings.mongo_timeout_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        self.pending = runtime_context.get_list_state(ListStateDescriptor("pending", Types.PICKLED_BYTE_ARRAY()))
        self.count = runtime_context.get_state(ValueStateDescriptor("count", Types.INT()))
        self.store = Storage(self.uri, self.database, self.timeout_ms)
        group = runtime_context.get_metrics_group()
        self.stored = group.counter("stored")
        self.duplicates = group.counter("duplicates_skipped")
        self.refused = group.counter("dead_lettered")

    def close(self) -> None:
        self.store.close()

    def process_element(self, item, ctx):
        self.pending.add(item)  # (reading, partition, offset)
        n = (self.count.value() or 0) + 1
        # A timer on the next multiple of the delay, registered for every element:
        # Flink keeps one timer per (key, time), so this costs little, and it needs
        # no "timer pending" flag that a restore could leave stale.
        now = ctx.timer_service().current_processing_time()
        ctx.timer_service().register_processing_time_timer((now // self.delay + 1) * self.delay)
        if n >= self.bulk_size:
            yield from self._flush()
        else:
            self.count.update(n)

    def on_timer(self, timestamp, ctx):
        yield from self._flush()

    def _flush(self):
        items = list(self.pending.get() or [])
        result = self.store.insert_readings([reading for reading, _, _ in items])
        self.stored.inc(result.stored)
        self.duplicates.inc(result.existing)
        self.refused.inc(len(result.rejected))
        for index, reason in result.rejected:
            reading, partition, offset = items[index]
            log.warning("reading %r not stored (dead-lettered): %s", reading.get("event_id"), reason)
            yield DEAD_LETTER, dead_letter(reason, _json(reading, strict=False), self.topic, partition, offset)
        self.pending.clear()
        self.count.clear()


def dedup_ttl(ttl_ms: int) -> StateTtlConfig:
    """The time-to-live of the window operator's seen event ids.

    The cleanup strategies are set explicitly, background cleanup off: its default includes
    RocksDB's compaction filter, whose default period PyFlink builds through a Py4J gateway, and in
    thread mode that gateway is launched from inside the TaskManager, which can leave the task
    INITIALIZING for good (FLINK-40628; seen here twice in ~40 pipeline starts: no window ever
    emitted, every checkpoint refused). Incremental cleanup is the heap backend's part of that
    default, kept as it was (5 entries per access); full-snapshot cleanup keeps checkpoints small.
    """
    return (StateTtlConfig.new_builder(Time.milliseconds(ttl_ms))
            .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
            .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
            .disable_cleanup_in_background()
            .cleanup_incrementally(5, False)
            .cleanup_full_snapshot()
            .build())


class DeviceWindows(KeyedProcessFunction):
    """Per device: collect new readings; at each interval boundary emit them as one window.

    Boundaries are multiples of ``window_seconds`` of processing time; a
    device with no new readings emits nothing. A window holds the readings
    that arrived since the device's previous window was emitted.

    A reading whose ``event_id`` the device has already seen is dropped: a
    producer restarted after a crash re-sends the readings after its last
    saved position, and windows are training data (a duplicate would be
    trained on twice). The ids live in keyed map state with a time-to-live
    (``flink.dedup_ttl_seconds``, longer than the producer's resend horizon),
    so memory stays bounded; the state is checkpointed with the windows.
    """

    def __init__(self, settings: JobSettings) -> None:
        self.topic = settings.readings_topic
        self.interval_ms = int(settings.window_seconds * 1000)
        self.partition = {int(k): v for k, v in settings.window_partition.items()}
        self.max_readings = settings.max_window_readings
        self.ttl_ms = int(settings.dedup_ttl_seconds * 1000)

    def open(self, runtime_context: RuntimeContext) -> None:
        self.pending = runtime_context.get_list_state(ListStateDescriptor("readings", Types.PICKLED_BYTE_ARRAY()))
        ttl = dedup_ttl(self.ttl_ms)
        seen = MapStateDescriptor("seen-event-ids", Types.STRING(), Types.BOOLEAN())
        seen.enable_time_to_live(ttl)
        self.seen = runtime_context.get_map_state(seen)
        self.duplicates = runtime_context.get_metrics_group().counter("duplicates_dropped")

    def process_element(self, item, ctx):
        event = item[0]["event_id"]
        if self.seen.contains(event):
            self.duplicates.inc()
            return iter(())
        self.seen.put(event, True)
        self.pending.add(item)  # (reading, partition, offset)
        # Register the boundary for every reading (Flink keeps one timer per
        # (key, time)). A "timer pending" flag in state instead was seen to go
        # stale after a restore from a checkpoint and silence a device for good.
        now = ctx.timer_service().current_processing_time()
        ctx.timer_service().register_processing_time_timer((now // self.interval_ms + 1) * self.interval_ms)
        return iter(())

    def on_timer(self, timestamp, ctx):
        items = list(self.pending.get() or [])
        self.pending.clear()
        if len(items) > self.max_readings:
            # A backlog (after downtime) would make one record too big for Kafka:
            # send the oldest now, the rest in the next windows.
            items, rest = items[:self.max_readings], items[self.max_readings:]
            self.pending.add_all(rest)
            ctx.timer_service().register_processing_time_timer(timestamp + self.interval_ms)
        if not items:
            return
        device = int(ctx.get_current_key())
        value = window_record(device, _iso_ms(timestamp - self.interval_ms), _iso_ms(timestamp),
                              [reading for reading, _, _ in items])
        try:
            yield Row(self.partition[device], str(device), _json(value))
        except (KeyError, TypeError, ValueError) as exc:  # validated readings always encode; if not: no restart
            reason = f"cannot send window: {type(exc).__name__}"
            for reading, partition, offset in items:
                yield DEAD_LETTER, dead_letter(reason, _json(reading, strict=False), self.topic, partition, offset)


def _environment(s: JobSettings) -> StreamExecutionEnvironment:
    config = Configuration()
    config.set_string("pipeline.name", JOB_NAME)
    config.set_string("python.executable", s.python_executable)
    config.set_string("python.client.executable", s.python_executable)
    config.set_string("python.fn-execution.bundle.size", str(s.bundle_size))
    config.set_string("python.fn-execution.bundle.time", str(s.bundle_time_ms))
    config.set_string("python.execution-mode", s.python_execution_mode)
    config.set_string("execution.checkpointing.interval", f"{s.checkpoint_interval_ms} ms")
    config.set_string("execution.checkpointing.mode", "EXACTLY_ONCE")
    config.set_string("execution.checkpointing.dir", Path(s.checkpoint_dir).resolve().as_uri())
    config.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    config.set_string("execution.checkpointing.num-retained", "3")
    # Keep retrying through a Kafka or MongoDB outage, backing off to a minute.
    config.set_string("restart-strategy.type", "exponential-delay")
    config.set_string("restart-strategy.exponential-delay.initial-backoff", "1 s")
    config.set_string("restart-strategy.exponential-delay.max-backoff", "60 s")
    if s.resume_from:
        config.set_string("execution.state-recovery.path", s.resume_from)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.add_jars(*(Path(j).resolve().as_uri() for j in s.jars))
    env.set_parallelism(s.parallelism)
    return env


def _kafka_sink(s: JobSettings, serializer: KafkaRecordSerializationSchema, name: str) -> KafkaSink:
    builder = (KafkaSink.builder()
               .set_bootstrap_servers(s.bootstrap_servers)
               .set_record_serializer(serializer)
               .set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE)
               .set_transactional_id_prefix(f"{s.group_id}-{name}")
               .set_property("transaction.timeout.ms", str(s.transaction_timeout_ms)))
    for key, value in s.kafka_properties.items():  # the login (SASL)
        builder = builder.set_property(key, value)
    return builder.build()


def _sql_properties(props: dict[str, str]) -> str:
    """Kafka client properties as options of the SQL connector (quotes doubled: SQL string literals)."""
    return "".join(f"\n            'properties.{k}' = '{v.replace(chr(39), chr(39) * 2)}'," for k, v in props.items())


def build(s: JobSettings) -> StreamExecutionEnvironment:
    env = _environment(s)
    t_env = StreamTableEnvironment.create(env)
    # The SQL connector gives each record's partition and offset (for the
    # dead-letter contract); the DataStream API's value-only source would not.
    t_env.execute_sql(f"""
        CREATE TABLE readings_source (
            `raw` STRING,
            `kafka_partition` INT METADATA FROM 'partition' VIRTUAL,
            `kafka_offset` BIGINT METADATA FROM 'offset' VIRTUAL
        ) WITH (
            'connector' = 'kafka',
            'topic' = '{s.readings_topic}',
            'properties.bootstrap.servers' = '{s.bootstrap_servers}',
            'properties.group.id' = '{s.group_id}',
            'properties.auto.offset.reset' = 'earliest',{_sql_properties(s.kafka_properties)}
            'scan.startup.mode' = 'group-offsets',
            'format' = 'raw'
        )""")
    records = t_env.to_data_stream(t_env.from_path("readings_source"))
    # Every operator below has a uid, so state restores into the same operator
    # even after the job's code changes.

    # (reading, partition, offset) from here on; dead letters leave every step by one side output.
    validated = records.process(Validate(s), output_type=Types.PICKLED_BYTE_ARRAY()).name("validate").uid("validate")

    shards = s.parallelism
    stored = (validated.key_by(lambda r: r[0]["device_id"] % shards, key_type=Types.INT())
              .process(BulkStore(s), output_type=Types.INT()).name("store device_data").uid("store-device-data"))
    jvm = get_gateway().jvm
    stored._j_data_stream.sinkTo(jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()).uid("stored")

    windows = (validated.key_by(lambda r: r[0]["device_id"], key_type=Types.INT())
               .process(DeviceWindows(s), output_type=WINDOW_ROW).name("per-device windows").uid("device-windows"))

    dead_letters = validated.get_side_output(DEAD_LETTER).union(stored.get_side_output(DEAD_LETTER),
                                                                windows.get_side_output(DEAD_LETTER))
    dead_letters.sink_to(_kafka_sink(s, KafkaRecordSerializationSchema.builder()
                                      .set_topic(s.dead_letter_topic)
                                      .set_value_serialization_schema(SimpleStringSchema())
                                      .build(), "dlq")).name("dead-letter topic").uid("dead-letter-sink")
    # PyFlink has no Python hook for the key, the value or the partition of a
    # Kafka record; two tiny Java classes (stream/flink/java) pick row fields.
    serializer = KafkaRecordSerializationSchema.builder()
    if s.windows_per_device:  # topic <windows>.<device id> (the key field), its one partition
        serializer._j_builder.setTopicSelector(jvm.fliot.flink.RowFieldTopicSelector(s.windows_topic, 1))
    else:
        serializer = serializer.set_topic(s.windows_topic)
    serializer._j_builder.setKeySerializationSchema(jvm.fliot.flink.RowFieldSerializationSchema(1))
    serializer._j_builder.setValueSerializationSchema(jvm.fliot.flink.RowFieldSerializationSchema(2))
    serializer._j_builder.setPartitioner(jvm.fliot.flink.RowFieldPartitioner(0))
    windows.sink_to(_kafka_sink(s, serializer.build(), "windows")).name("window topic").uid("window-sink")
    return env


def flink_env_root(s: JobSettings) -> Path:
    """The Flink virtualenv: ``<env>/bin/python`` (not resolved: the venv's python is a symlink)."""
    return Path(s.python_executable).parent.parent


def _log_operator_interpreter(s: JobSettings) -> None:
    """Log what the first Python operator reports about its interpreter (a file it writes at open;
    in process mode operators open with the first record, so this may take a while)."""
    path = Path(s.python_env_report)
    while not path.is_file():
        time.sleep(1.0)
    report = json.loads(path.read_text())
    log.log(logging.ERROR if report["foreign_modules"] else logging.INFO, "%s", interpreter.summary(report))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The fl-iot-stream Flink job.")
    parser.add_argument("--settings", required=True, type=Path, help="JSON written by `fl-app flink`")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format=LOG_FORMAT)
    # Our lines get a handler of their own: when PyFlink submits the job it lowers the root
    # logger to WARNING, and a local run's Python worker replaces the root handlers with Beam's.
    own = logging.StreamHandler(sys.stdout)
    own.setFormatter(logging.Formatter(LOG_FORMAT))
    log.addHandler(own)
    log.setLevel(logging.INFO)
    log.propagate = False
    s = JobSettings.load(args.settings)
    log.info("starting: %s -> device_data, %s (windows every %gs), %s; checkpoints every %d ms in %s%s",
             s.readings_topic, s.windows_topic, s.window_seconds, s.dead_letter_topic, s.checkpoint_interval_ms,
             s.checkpoint_dir, f"; resuming from {s.resume_from}" if s.resume_from else "")
    log.info("Python operators: %s mode, python.executable %s; this client runs on %s (prefix %s)",
             s.python_execution_mode, s.python_executable, sys.executable, sys.prefix)
    Path(s.python_env_report).unlink(missing_ok=True)
    started = time.monotonic()
    threading.Thread(target=_log_operator_interpreter, args=(s,), name="interpreter-report", daemon=True).start()
    if s.jobmanager == "local":
        build(s).execute(JOB_NAME)
    else:
        # The job's name says whose it is: a cluster may run the jobs of other consumer groups too.
        session.run(s.jobmanager, f"{JOB_NAME} ({s.group_id})",
                    lambda: str(build(s).execute_async(f"{JOB_NAME} ({s.group_id})").get_job_id()))
    log.info("job ended after %.0fs", time.monotonic() - started)


if __name__ == "__main__":
    main()
