package fliot.flink;

import org.apache.flink.connector.kafka.sink.TopicSelector;
import org.apache.flink.types.Row;

/**
 * Sends each record to the topic {@code <prefix>.<field>}: with Kafka SASL every device has a
 * window topic of its own (core.records.device_window_topic), because Kafka's ACLs name topics,
 * not partitions. PyFlink has no Python API for a sink's topic selector.
 */
public final class RowFieldTopicSelector implements TopicSelector<Row> {
    private static final long serialVersionUID = 1L;
    private final String prefix;
    private final int field;

    public RowFieldTopicSelector(String prefix, int field) {
        this.prefix = prefix;
        this.field = field;
    }

    @Override
    public String apply(Row row) {
        return prefix + "." + row.getField(field);
    }
}
