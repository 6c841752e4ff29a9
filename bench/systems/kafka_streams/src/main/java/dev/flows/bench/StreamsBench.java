package dev.flows.bench;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.StateRestoreListener;
import org.apache.kafka.streams.processor.api.FixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorContext;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * The Kafka Streams side of the bench's cases, written as Kafka Streams' documentation shows,
 * configured only by the {@code BENCH_*} environment variables (see bench/harness.py).
 *
 * <ul>
 *   <li>{@code stateless-json}: {@code mapValues} parses the JSON with Jackson, upper-cases
 *       {@code user}, writes it back; the key is kept.
 *   <li>{@code wordcount}: {@code flatMapValues} to the words of the lower-cased line ({@code
 *       [^\W_]+}, Unicode classes as Python's {@code re}), {@code groupBy} the word (a
 *       repartition topic), {@code count()} in a RocksDB store (its changelog topic), each
 *       count to the output as a decimal string.
 *   <li>{@code count} (the failover and keyspace cases): wordcount's count alone over keyed
 *       records, {@code processValues} with a persistent key-value store (RocksDB, its
 *       changelog topic, no cache: the store builder's defaults) holding each key's count; out
 *       goes {@code "<count> <the input's value>"} (the value carries the failover marker).
 *       The key is the input's, so there is no repartition.
 * </ul>
 *
 * <p>{@code BENCH_MODE=eos} sets {@code processing.guarantee=exactly_once_v2}, else {@code
 * at_least_once}. The defaults otherwise, but: wordcount turns the record cache off ({@code
 * statestore.cache.max.bytes=0}), which would merge a word's updates within a commit interval
 * into one output, where the other systems emit one per word occurrence; and a closing client
 * leaves its group (at shutdown, after the measured window). The
 * consumer group is the application id ({@code BENCH_GROUP}): the bench opens its window when
 * that group is stable with partitions assigned, as it does for every system. {@code
 * BENCH_SESSION_TIMEOUT_MS} (the failover case) sets the consumer's {@code session.timeout.ms},
 * and every state restoration is printed ({@code kafka-streams: restored ...}): how long a
 * replacement spends reading changelogs before it processes.
 */
public final class StreamsBench {
  private static final Pattern WORD = Pattern.compile("[^\\W_]+", Pattern.UNICODE_CHARACTER_CLASS);

  private StreamsBench() {}

  static List<String> words(String line) {
    List<String> found = new ArrayList<>();
    Matcher matcher = WORD.matcher(line.toLowerCase(Locale.ROOT));
    while (matcher.find()) {
      found.add(matcher.group());
    }
    return found;
  }

  /** A key's running count in the store; the output is the count, then the input's value. */
  static final class Tally implements FixedKeyProcessor<String, String, String> {
    private FixedKeyProcessorContext<String, String> context;
    private KeyValueStore<String, Long> counts;

    @Override
    public void init(FixedKeyProcessorContext<String, String> context) {
      this.context = context;
      this.counts = context.getStateStore("counts");
    }

    @Override
    public void process(FixedKeyRecord<String, String> record) {
      Long before = counts.get(record.key());
      long total = (before == null ? 0L : before) + 1;
      counts.put(record.key(), total);
      context.forward(record.withValue(total + " " + record.value()));
    }
  }

  /** Prints each restoration's end: records restored and how long it took, per partition. */
  static final class Restorations implements StateRestoreListener {
    private final Map<TopicPartition, Long> started = new java.util.concurrent.ConcurrentHashMap<>();

    @Override
    public void onRestoreStart(TopicPartition partition, String store, long start, long end) {
      started.put(partition, System.nanoTime());
      System.out.println(
          "kafka-streams: restoring " + partition + " offsets " + start + ".." + end);
    }

    @Override
    public void onBatchRestored(TopicPartition partition, String store, long end, long count) {}

    @Override
    public void onRestoreEnd(TopicPartition partition, String store, long total) {
      Long since = started.remove(partition);
      long ms = since == null ? -1 : (System.nanoTime() - since) / 1_000_000;
      System.out.println(
          "kafka-streams: restored " + partition + ": " + total + " records in " + ms + " ms");
    }
  }

  static Topology topology(String kase, String source, String sink) {
    StreamsBuilder builder = new StreamsBuilder();
    switch (kase) {
      case "stateless-json" -> {
        ObjectMapper mapper = new ObjectMapper();
        builder.stream(source, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
            .mapValues(
                value -> {
                  try {
                    ObjectNode node = (ObjectNode) mapper.readTree(value);
                    node.put("user", node.get("user").asText().toUpperCase(Locale.ROOT));
                    return mapper.writeValueAsBytes(node);
                  } catch (IOException error) {
                    throw new UncheckedIOException(error);
                  }
                })
            .to(sink, Produced.with(Serdes.ByteArray(), Serdes.ByteArray()));
      }
      case "wordcount" ->
          builder.stream(source, Consumed.with(Serdes.ByteArray(), Serdes.String()))
              .flatMapValues(StreamsBench::words)
              .groupBy((key, word) -> word, Grouped.with("words", Serdes.String(), Serdes.String()))
              .count(Materialized.as("counts"))
              .toStream()
              .mapValues(count -> Long.toString(count))
              .to(sink, Produced.with(Serdes.String(), Serdes.String()));
      case "count" -> {
        builder.addStateStore(
            Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore("counts"), Serdes.String(), Serdes.Long()));
        builder.stream(source, Consumed.with(Serdes.String(), Serdes.String()))
            .processValues(Tally::new, "counts")
            .to(sink, Produced.with(Serdes.String(), Serdes.String()));
      }
      default -> throw new IllegalArgumentException("kafka-streams: unknown case " + kase);
    }
    return builder.build();
  }

  public static void main(String[] args) throws InterruptedException {
    Map<String, String> env = System.getenv();
    String kase = env.get("BENCH_CASE");
    Properties props = new Properties();
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, env.get("BENCH_GROUP"));
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, env.get("BENCH_BOOTSTRAP"));
    props.put(
        StreamsConfig.PROCESSING_GUARANTEE_CONFIG,
        "eos".equals(env.get("BENCH_MODE"))
            ? StreamsConfig.EXACTLY_ONCE_V2
            : StreamsConfig.AT_LEAST_ONCE);
    props.put(StreamsConfig.STATE_DIR_CONFIG, env.getOrDefault("BENCH_STATE_DIR", "state"));
    // Closing leaves the group (Kafka Streams stays in it by default, to spare a restart a
    // rebalance), so the bench can delete the group without waiting for its session to end.
    // Shutdown only: nothing the run measures.
    props.put(StreamsConfig.consumerPrefix("internal.leave.group.on.close"), true);
    if ("wordcount".equals(kase)) {
      props.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0L);
    }
    String session = env.get("BENCH_SESSION_TIMEOUT_MS");
    if (session != null && !session.isEmpty()) {
      props.put(StreamsConfig.consumerPrefix("session.timeout.ms"), Integer.parseInt(session));
    }
    Topology topology = topology(kase, env.get("BENCH_IN"), env.get("BENCH_OUT"));
    KafkaStreams streams = new KafkaStreams(topology, props);
    CountDownLatch ended = new CountDownLatch(1);
    boolean[] failed = {false};
    streams.setGlobalStateRestoreListener(new Restorations());
    streams.setUncaughtExceptionHandler(
        error -> {
          System.out.println("kafka-streams: failed: " + error);
          error.printStackTrace(System.out);
          failed[0] = true;
          return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
    streams.setStateListener(
        (now, before) -> {
          System.out.println("kafka-streams: " + before + " -> " + now);
          if (now == KafkaStreams.State.NOT_RUNNING || now == KafkaStreams.State.ERROR) {
            ended.countDown();
          }
        });
    // SIGTERM (the bench's stop) closes the client cleanly: it commits what it processed
    Runtime.getRuntime()
        .addShutdownHook(new Thread(() -> streams.close(Duration.ofSeconds(20)), "close"));
    streams.start();
    ended.await();
    System.exit(failed[0] ? 1 : 0);
  }
}
