package fliot.flink;

import org.apache.flink.connector.kafka.sink.KafkaPartitioner;
import org.apache.flink.types.Row;

/**
 * Sends each record to the Kafka partition named by one integer field of the row.
 *
 * <p>The PyFlink job computes a device's window partition from the shared
 * contract (core.records.window_partition), so this class holds no mapping
 * of its own. PyFlink has no Python API for a sink partitioner; this is the
 * smallest Java piece that gives one.
 */
public final class RowFieldPartitioner<T> implements KafkaPartitioner<T> {
    private static final long serialVersionUID = 1L;
    private final int field;

    public RowFieldPartitioner(int field) {
        this.field = field;
    }

    @Override
    public int partition(T record, byte[] key, byte[] value, String topic, int[] partitions) {
        int wanted = ((Number) ((Row) record).getField(field)).intValue();
        if (wanted < 0 || wanted >= partitions.length) {
            throw new IllegalArgumentException(
                "record asks for partition " + wanted + " but topic " + topic + " has " + partitions.length);
        }
        return partitions[wanted];
    }
}
