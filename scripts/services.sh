#!/usr/bin/env bash
# Start, stop and inspect the services flows needs for its integration tests,
# demo and benchmarks:
#
#   Kafka            localhost:9092   (single-node KRaft broker+controller)
#   PostgreSQL       localhost:5432   user postgres / password postgres, database flows
#   Schema Registry  http://localhost:8081/apis/ccompat/v7   (Apicurio Registry serving
#                    Confluent's REST API; in-memory storage, so its schemas and ids last
#                    as long as the process; global compatibility BACKWARD, Confluent's default)
#
# usage: bash scripts/services.sh up|down|status
#        (and, one service at a time: kafka-start|kafka-stop|pg-start|pg-stop|
#         registry-start|registry-stop)
#
# With a Docker engine that answers, `up`/`down` use docker-compose.yml.
# Otherwise Kafka runs from the jars that scripts/kafka/pom.xml fetches from
# Maven Central, the Schema Registry from the Apicurio Registry distribution that
# scripts/registry/pom.xml fetches from Maven Central (3.x on the newest Java 21+
# found on this machine, else 2.6.x on Java 17), and PostgreSQL is the Debian
# cluster (installed with apt-get when missing and we are root) or, when not root,
# a private cluster in .cache. Everything this script makes lives under
# <repo>/.cache. `down` stops only what `up` started; a port that something else
# already serves is used as it is.
#
# When FLOWS_BOOTSTRAP_SERVERS and FLOWS_DATABASE_URL are both set, `up` uses
# those services and starts nothing (the registry is then FLOWS_SCHEMA_REGISTRY_URL,
# or the default address above).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
POM="$ROOT/scripts/kafka/pom.xml"
REGISTRY_POM="$ROOT/scripts/registry/pom.xml"
COMPOSE_FILE="$ROOT/docker-compose.yml"

KAFKA_DIR="$CACHE/kafka"
KAFKA_LIBS="$KAFKA_DIR/libs"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_LOG="$KAFKA_DIR/broker.log"
KAFKA_PID="$KAFKA_DIR/broker.pid"
KAFKA_PROPS="$KAFKA_DIR/server.properties"
KAFKA_LOG4J="$KAFKA_DIR/log4j2.properties"
KAFKA_CLUSTER_ID="$KAFKA_DIR/cluster.id"
KAFKA_HOST=localhost
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
KAFKA_HEAP_OPTS="${FLOWS_KAFKA_HEAP_OPTS:--Xmx1G -Xms256m}"
KAFKA_WAIT_SECONDS="${FLOWS_KAFKA_WAIT_SECONDS:-120}"

PG_MARK="$CACHE/pg.started"
PG_PRIVATE="$CACHE/postgres"
PG_HOST=localhost
PG_PORT=5432
PG_DB=flows
PG_WAIT_SECONDS=60

REGISTRY_DIR="$CACHE/registry"
REGISTRY_LOG="$REGISTRY_DIR/registry.log"
REGISTRY_PID="$REGISTRY_DIR/registry.pid"
REGISTRY_INFO="$REGISTRY_DIR/registry.running"
REGISTRY_HOST=localhost
REGISTRY_PORT=8081
REGISTRY_URL="http://$REGISTRY_HOST:$REGISTRY_PORT/apis/ccompat/v7"
REGISTRY_COMPATIBILITY=BACKWARD
REGISTRY_HEAP_OPTS="${FLOWS_REGISTRY_HEAP_OPTS:--Xms32m -Xmx256m}"
REGISTRY_WAIT_SECONDS="${FLOWS_REGISTRY_WAIT_SECONDS:-120}"

VENV_PY="$ROOT/.venv/bin/python"

log() { printf '[services] %s\n' "$*" >&2; }
die() {
    printf '[services] ERROR: %s\n' "$*" >&2
    exit 1
}
is_root() { [[ "$(id -u)" == 0 ]]; }

# A TCP connect to host:port answers (bash's /dev/tcp, no extra tools).
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

docker_ok() {
    command -v docker >/dev/null 2>&1 && timeout 15 docker info >/dev/null 2>&1
}

compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose -f "$COMPOSE_FILE" "$@"
    elif command -v docker-compose >/dev/null 2>&1; then
        docker-compose -f "$COMPOSE_FILE" "$@"
    else
        die "a Docker engine answers but neither 'docker compose' nor 'docker-compose' is installed"
    fi
}

# The value of property $2 in pom.xml $1.
pom_property() {
    sed -n "s:.*<$2>\(.*\)</$2>.*:\1:p" "$1" | head -n1
}

# ----------------------------------------------------------------------------
# Kafka
# ----------------------------------------------------------------------------

kafka_version() { pom_property "$POM" kafka.version; }

ensure_java_and_maven() {
    local missing=()
    command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
    command -v mvn >/dev/null 2>&1 || missing+=(maven)
    ((${#missing[@]} == 0)) && return 0
    if is_root && command -v apt-get >/dev/null 2>&1; then
        log "installing ${missing[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        die "Kafka needs Java 17+ and Maven; install them, e.g.: sudo apt-get install -y ${missing[*]}"
    fi
}

# The jars, fetched once per content of pom.xml (so a version change refetches).
ensure_kafka_libs() {
    local want have=""
    want="$(kafka_version) $(sha256sum "$POM" | cut -c1-16)"
    [[ -f "$KAFKA_LIBS/.fetched" ]] && have="$(cat "$KAFKA_LIBS/.fetched")"
    [[ "$have" == "$want" ]] && return 0
    ensure_java_and_maven
    log "fetching Apache Kafka $(kafka_version) jars from Maven Central into $KAFKA_LIBS"
    rm -rf "$KAFKA_LIBS.tmp"
    mkdir -p "$KAFKA_DIR"
    if ! mvn -q -B -f "$POM" dependency:copy-dependencies \
        -DoutputDirectory="$KAFKA_LIBS.tmp" -DincludeScope=runtime >"$KAFKA_DIR/mvn.log" 2>&1; then
        tail -n 40 "$KAFKA_DIR/mvn.log" >&2
        die "could not fetch the Kafka jars (see $KAFKA_DIR/mvn.log)"
    fi
    ls "$KAFKA_LIBS.tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "no kafka_2.13 jar was fetched"
    rm -rf "$KAFKA_LIBS"
    mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
    echo "$want" >"$KAFKA_LIBS/.fetched"
}

kafka_java() {
    java -Djava.awt.headless=true -Dlog4j2.configurationFile="$KAFKA_LOG4J" \
        -cp "$KAFKA_LIBS/*" "$@"
}

write_kafka_config() {
    mkdir -p "$KAFKA_DATA"
    cat >"$KAFKA_PROPS" <<EOF
# generated by scripts/services.sh; edits are overwritten by the next 'up'
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
    cat >"$KAFKA_LOG4J" <<'EOF'
# generated by scripts/services.sh: log4j2 for the local broker, to stdout (broker.log)
status = warn
name = flows-kafka
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
EOF
}

format_kafka_storage() {
    [[ -f "$KAFKA_DATA/meta.properties" ]] && return 0
    local cid
    if [[ ! -s "$KAFKA_CLUSTER_ID" ]]; then
        cid="$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
        [[ -n "$cid" ]] || die "kafka.tools.StorageTool random-uuid printed nothing"
        echo "$cid" >"$KAFKA_CLUSTER_ID"
    fi
    cid="$(cat "$KAFKA_CLUSTER_ID")"
    log "formatting Kafka storage (cluster id $cid)"
    if ! kafka_java kafka.tools.StorageTool format --standalone --ignore-formatted \
        -t "$cid" -c "$KAFKA_PROPS" >"$KAFKA_DIR/format.log" 2>&1; then
        cat "$KAFKA_DIR/format.log" >&2
        die "formatting the Kafka storage failed"
    fi
}

# Our broker: the pid in broker.pid is alive and is a kafka.Kafka java process.
# Prints the pid in pid file $1 when that process is alive and its command line holds
# the fixed string $2 (a recycled pid is someone else's); fails otherwise.
our_pid() {
    [[ -f "$1" ]] || return 1
    local pid
    pid="$(cat "$1")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2" || return 1
    echo "$pid"
}

# SIGTERM to pid $2, SIGKILL if it has not exited within 30 s; $1 ("Kafka: the broker")
# names it in the log.
stop_pid() {
    local name="$1" pid="$2"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "$name did not stop within 30s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
}

our_kafka_pid() { our_pid "$KAFKA_PID" 'kafka.Kafka'; }

start_kafka() {
    ensure_kafka_libs
    write_kafka_config
    format_kafka_storage
    [[ -f "$KAFKA_LOG" ]] && mv -f "$KAFKA_LOG" "$KAFKA_LOG.1"
    log "starting Apache Kafka $(kafka_version) on $KAFKA_HOST:$KAFKA_PORT (log: $KAFKA_LOG)"
    rm -f "$KAFKA_PID"
    # A new session, so that the broker outlives this script and its caller's
    # process group; the shell writes its own pid, then becomes the JVM.
    # shellcheck disable=SC2086,SC2016
    setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$KAFKA_PID" \
        java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$KAFKA_LOG4J" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_PROPS" \
        </dev/null >"$KAFKA_LOG" 2>&1 &

    for _ in $(seq 50); do
        [[ -s "$KAFKA_PID" ]] && return 0
        sleep 0.1
    done
    die "the broker did not start (no pid file); see $KAFKA_LOG"
}

kafka_tail() {
    if [[ -f "$KAFKA_LOG" ]]; then
        log "last lines of $KAFKA_LOG:"
        tail -n 40 "$KAFKA_LOG" >&2
    fi
}

# One readiness probe. With confluent_kafka: metadata with a broker, and a
# throwaway topic created and deleted. Without: the port and the log line.
kafka_probe() {
    if [[ -x "$VENV_PY" ]] && "$VENV_PY" -c 'import confluent_kafka' 2>/dev/null; then
        "$VENV_PY" - "$KAFKA_HOST:$KAFKA_PORT" <<'EOF' 2>/dev/null
import sys
import uuid

from confluent_kafka.admin import AdminClient, NewTopic

admin = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0})
md = admin.list_topics(timeout=5)
if not md.brokers:
    sys.exit(1)
name = f"__flows_ready_{uuid.uuid4().hex[:12]}"
admin.create_topics([NewTopic(name, 1, 1)], operation_timeout=10)[name].result(timeout=15)
admin.delete_topics([name], operation_timeout=10)[name].result(timeout=15)
EOF
    else
        port_open "$KAFKA_HOST" "$KAFKA_PORT" || return 1
        # A broker that is not ours gives us no log: the port must do.
        [[ -z "$(our_kafka_pid || true)" ]] && return 0
        grep -q 'Kafka Server started' "$KAFKA_LOG" 2>/dev/null
    fi
}

wait_kafka() {
    local deadline=$((SECONDS + KAFKA_WAIT_SECONDS))
    while ((SECONDS < deadline)); do
        if kafka_probe; then
            return 0
        fi
        if [[ -f "$KAFKA_PID" ]] && [[ -z "$(our_kafka_pid || true)" ]] \
            && ! port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
            kafka_tail
            die "the Kafka broker exited during startup"
        fi
        sleep 1
    done
    kafka_tail
    die "Kafka on $KAFKA_HOST:$KAFKA_PORT was not ready within ${KAFKA_WAIT_SECONDS}s"
}

kafka_up() {
    mkdir -p "$KAFKA_DIR"
    local pid
    if pid="$(our_kafka_pid)"; then
        log "Kafka: our broker is running (pid $pid)"
    elif port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
        rm -f "$KAFKA_PID"
        log "Kafka: $KAFKA_HOST:$KAFKA_PORT is already served by another process; using it"
    else
        start_kafka
    fi
    wait_kafka
}

kafka_down() {
    local pid
    if ! pid="$(our_kafka_pid)"; then
        rm -f "$KAFKA_PID"
        log "Kafka: no broker of ours is running"
        return 0
    fi
    log "Kafka: stopping our broker (pid $pid)"
    stop_pid "Kafka: the broker" "$pid"
    rm -f "$KAFKA_PID"
}

kafka_status() {
    local pid
    if pid="$(our_kafka_pid)"; then
        if port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
            echo "Kafka: up (our broker, pid $pid) on $KAFKA_HOST:$KAFKA_PORT"
        else
            echo "Kafka: starting (our broker, pid $pid); $KAFKA_HOST:$KAFKA_PORT not answering yet"
        fi
    elif port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
        echo "Kafka: up on $KAFKA_HOST:$KAFKA_PORT (not started by this script)"
    else
        echo "Kafka: down"
        return 1
    fi
}

# ----------------------------------------------------------------------------
# Schema Registry (Apicurio Registry, Confluent's REST API under /apis/ccompat/v7)
# ----------------------------------------------------------------------------

# The major version of the java binary $1 (8, 17, 21, 25...), from `java -version`.
java_major() {
    local v
    v="$("$1" -version 2>&1 | sed -n 's/.* version "\([0-9][0-9.]*\).*/\1/p' | head -n1)"
    v="${v#1.}" # Java 8 and older say 1.8.0_x
    v="${v%%.*}"
    [[ "$v" =~ ^[0-9]+$ ]] && echo "$v"
}

# Every java binary on this machine, each once: JAVA_HOME's, the alternatives',
# those under /usr/lib/jvm, the one on PATH.
java_candidates() {
    {
        if [[ -n "${JAVA_HOME:-}" ]]; then echo "$JAVA_HOME/bin/java"; fi
        update-alternatives --list java 2>/dev/null || true
        compgen -G '/usr/lib/jvm/*/bin/java' || true
        command -v java || true
    } | while read -r j; do
        if [[ -x "$j" ]]; then readlink -f "$j"; fi
    done | awk '!seen[$0]++'
}

# "MAJOR PATH" of the newest java binary whose major version is at least $1;
# fails when there is none.
find_java() {
    local j m best="" best_major=0
    while read -r j; do
        m="$(java_major "$j")" || continue
        if ((m >= $1 && m > best_major)); then
            best="$j"
            best_major="$m"
        fi
    done < <(java_candidates)
    [[ -n "$best" ]] && echo "$best_major $best"
}

# Chooses the registry release and the java that runs it: Apicurio Registry 3.x
# (registry.version in the pom) needs Java 21+; 2.6.x (registry.java17.version)
# runs on Java 17. Sets REGISTRY_VERSION, REGISTRY_JAVA and REGISTRY_JAVA_MAJOR.
choose_registry_java() {
    local found
    if ! found="$(find_java 21)" && ! found="$(find_java 17)"; then
        ensure_java_and_maven # a machine with no java at all gets Debian's (17)
        found="$(find_java 17)" || die "the Schema Registry (Apicurio Registry) needs Java 21 or newer \
for $(pom_property "$REGISTRY_POM" registry.version), or Java 17 for \
$(pom_property "$REGISTRY_POM" registry.java17.version); no such java was found (JAVA_HOME, \
update-alternatives, /usr/lib/jvm, PATH). Install one, e.g.: sudo apt-get install -y openjdk-17-jre-headless"
    fi
    read -r REGISTRY_JAVA_MAJOR REGISTRY_JAVA <<<"$found"
    if ((REGISTRY_JAVA_MAJOR >= 21)); then
        REGISTRY_VERSION="$(pom_property "$REGISTRY_POM" registry.version)"
    else
        REGISTRY_VERSION="$(pom_property "$REGISTRY_POM" registry.java17.version)"
        log "Schema Registry: no Java 21+ found; running Apicurio Registry $REGISTRY_VERSION on \
Java $REGISTRY_JAVA_MAJOR (install a JDK 21+ for $(pom_property "$REGISTRY_POM" registry.version))"
    fi
}

registry_app_dir() { echo "$REGISTRY_DIR/app-$1"; }

# The distribution of release $1, fetched and unpacked once per content of the
# pom (so a version change refetches).
ensure_registry_app() {
    local app want have=""
    app="$(registry_app_dir "$1")"
    want="$1 $(sha256sum "$REGISTRY_POM" | cut -c1-16)"
    [[ -f "$app/.fetched" ]] && have="$(cat "$app/.fetched")"
    [[ "$have" == "$want" ]] && return 0
    ensure_java_and_maven
    log "fetching Apicurio Registry $1 from Maven Central into $app"
    rm -rf "$app.tmp"
    mkdir -p "$REGISTRY_DIR"
    if ! mvn -q -B -f "$REGISTRY_POM" dependency:unpack -Dregistry.version="$1" \
        -Dregistry.dir="$app.tmp" >"$REGISTRY_DIR/mvn.log" 2>&1; then
        tail -n 40 "$REGISTRY_DIR/mvn.log" >&2
        die "could not fetch Apicurio Registry $1 (see $REGISTRY_DIR/mvn.log)"
    fi
    [[ -n "$(registry_jar "$app.tmp")" ]] || die "Apicurio Registry $1 was fetched but holds no runnable jar"
    rm -rf "$app"
    mv "$app.tmp" "$app"
    echo "$want" >"$app/.fetched"
}

# The jar to run in an unpacked distribution: a Quarkus fast-jar (3.x) or the
# runner jar beside its lib/ (2.x).
registry_jar() {
    if [[ -f "$1/quarkus-run.jar" ]]; then
        echo "$1/quarkus-run.jar"
    else
        compgen -G "$1/apicurio-registry-app-*-runner.jar" | head -n1 || true
    fi
}

# HTTP without curl: `http_call METHOD URL [JSON]` prints the status code (000
# when nothing answers) and, on the next line, the body. Proxies are ignored.
http_call() {
    python3 - "$@" <<'PY' 2>/dev/null || echo 000
import sys
import urllib.error
import urllib.request

method, url = sys.argv[1], sys.argv[2]
body = sys.argv[3].encode() if len(sys.argv) > 3 else None
headers = {"Content-Type": "application/vnd.schemaregistry.v1+json"} if body else {}
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(urllib.request.Request(url, body, headers, method=method), timeout=5) as r:
        status, text = r.status, r.read()
except urllib.error.HTTPError as e:
    status, text = e.code, e.read()
except OSError:
    status, text = 0, b""
print(f"{status:03d}")
print(text.decode(errors="replace"))
PY
}

registry_ready() {
    [[ "$(http_call GET "$REGISTRY_URL/subjects" | head -n1)" == 200 ]]
}

# Our registry: the pid in registry.pid is alive and runs a jar from .cache/registry.
our_registry_pid() { our_pid "$REGISTRY_PID" "-jar $REGISTRY_DIR/app-"; }

start_registry() {
    choose_registry_java
    ensure_registry_app "$REGISTRY_VERSION"
    local app jar props
    app="$(registry_app_dir "$REGISTRY_VERSION")"
    jar="$(registry_jar "$app")"
    # The default global rule, in force from the first request on (the property's
    # name changed in 3.0). Storage is the distribution's default: an in-memory H2
    # database, new at every start.
    props=(-Dquarkus.http.host="$REGISTRY_HOST" -Dquarkus.http.port="$REGISTRY_PORT"
        -Dquarkus.http.access-log.enabled=false)
    case "$REGISTRY_VERSION" in
        2.*) props+=(-Dregistry.rules.global.compatibility="$REGISTRY_COMPATIBILITY") ;;
        *)
            # 3.x serves health and metrics on a second port (9000 by default): any
            # free one, so that it never collides with another service.
            props+=(-Dapicurio.rules.global.compatibility="$REGISTRY_COMPATIBILITY"
                -Dquarkus.management.host="$REGISTRY_HOST" -Dquarkus.management.port=0)
            ;;
    esac
    [[ -f "$REGISTRY_LOG" ]] && mv -f "$REGISTRY_LOG" "$REGISTRY_LOG.1"
    log "starting Apicurio Registry $REGISTRY_VERSION (Java $REGISTRY_JAVA_MAJOR: $REGISTRY_JAVA) \
on $REGISTRY_HOST:$REGISTRY_PORT (log: $REGISTRY_LOG)"
    rm -f "$REGISTRY_PID"
    echo "Apicurio Registry $REGISTRY_VERSION on Java $REGISTRY_JAVA_MAJOR" >"$REGISTRY_INFO"
    # As for Kafka: a new session, the pid written by the shell that becomes the
    # JVM (in the distribution's directory). Nothing but that shell is forked, so
    # no process of ours keeps the caller's stdout open (a caller reading it to
    # the end would wait for the registry to exit). A dev registry beside Kafka,
    # PostgreSQL and the tests on two cores: a small heap, the serial GC, and the
    # C1 compiler only (measured here: ready in about 4 s instead of 6-8, and
    # 200 MB resident instead of 260).
    # shellcheck disable=SC2086,SC2016
    setsid nohup bash -c 'echo $$ >"$0"; cd "$1" && shift && exec "$@"' "$REGISTRY_PID" "$app" \
        "$REGISTRY_JAVA" $REGISTRY_HEAP_OPTS -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -Djava.awt.headless=true \
        "${props[@]}" -jar "$jar" </dev/null >"$REGISTRY_LOG" 2>&1 &

    for _ in $(seq 50); do
        [[ -s "$REGISTRY_PID" ]] && return 0
        sleep 0.1
    done
    die "the Schema Registry did not start (no pid file); see $REGISTRY_LOG"
}

registry_tail() {
    if [[ -f "$REGISTRY_LOG" ]]; then
        log "last lines of $REGISTRY_LOG:"
        tail -n 40 "$REGISTRY_LOG" >&2
    fi
}

wait_registry() {
    local deadline=$((SECONDS + REGISTRY_WAIT_SECONDS))
    while ((SECONDS < deadline)); do
        registry_ready && return 0
        if [[ -f "$REGISTRY_PID" ]] && [[ -z "$(our_registry_pid || true)" ]] \
            && ! port_open "$REGISTRY_HOST" "$REGISTRY_PORT"; then
            registry_tail
            die "the Schema Registry exited during startup"
        fi
        sleep 0.5
    done
    registry_tail
    die "no Schema Registry answered GET $REGISTRY_URL/subjects with 200 within ${REGISTRY_WAIT_SECONDS}s"
}

# The global compatibility of our registry is BACKWARD, and its Confluent API
# says so: 2.6.x enforces the rule set by its property but reports NONE, so it
# is set once more through the API.
ensure_registry_compatibility() {
    local reply
    reply="$(http_call GET "$REGISTRY_URL/config")"
    [[ "$reply" == *"\"$REGISTRY_COMPATIBILITY\""* ]] && return 0
    reply="$(http_call PUT "$REGISTRY_URL/config" "{\"compatibility\":\"$REGISTRY_COMPATIBILITY\"}")"
    [[ "$(head -n1 <<<"$reply")" == 200 ]] \
        || die "could not set the registry's global compatibility to $REGISTRY_COMPATIBILITY: $reply"
}

# Starts our registry unless one runs or the port is served; does not wait.
registry_launch() {
    mkdir -p "$REGISTRY_DIR"
    local pid
    if pid="$(our_registry_pid)"; then
        log "Schema Registry: ours is running (pid $pid)"
    elif port_open "$REGISTRY_HOST" "$REGISTRY_PORT"; then
        rm -f "$REGISTRY_PID"
        log "Schema Registry: $REGISTRY_HOST:$REGISTRY_PORT is already served by another process; using it"
    else
        start_registry
    fi
}

registry_wait() {
    wait_registry
    if our_registry_pid >/dev/null; then
        ensure_registry_compatibility
    fi
}

registry_up() {
    registry_launch
    registry_wait
}

registry_down() {
    local pid
    if ! pid="$(our_registry_pid)"; then
        rm -f "$REGISTRY_PID" "$REGISTRY_INFO"
        log "Schema Registry: none of ours is running"
        return 0
    fi
    log "Schema Registry: stopping ours (pid $pid)"
    stop_pid "Schema Registry: it" "$pid"
    rm -f "$REGISTRY_PID" "$REGISTRY_INFO"
}

registry_status() {
    local pid what=""
    [[ -f "$REGISTRY_INFO" ]] && what="$(cat "$REGISTRY_INFO"), "
    if pid="$(our_registry_pid)"; then
        if registry_ready; then
            echo "Schema Registry: up (ours: ${what}pid $pid) at $REGISTRY_URL"
        else
            echo "Schema Registry: starting (ours: ${what}pid $pid); $REGISTRY_URL not answering yet"
        fi
    elif registry_ready; then
        echo "Schema Registry: up at $REGISTRY_URL (not started by this script)"
    else
        echo "Schema Registry: down"
        return 1
    fi
}

# ----------------------------------------------------------------------------
# PostgreSQL
# ----------------------------------------------------------------------------

pg_bindir() {
    local d
    d="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null \
        | sort -V | tail -n1)"
    if [[ -n "$d" && -x "$d/postgres" ]]; then
        echo "$d"
    fi
}

pg_major() { basename "$(dirname "$1")"; }

pg_ready() {
    local isready
    isready="$(command -v pg_isready || true)"
    [[ -z "$isready" ]] && isready="$(pg_bindir)/pg_isready"
    [[ -x "$isready" ]] || return 1
    "$isready" -q -h "$PG_HOST" -p "$PG_PORT" -t 2 2>/dev/null
}

wait_pg() {
    local deadline=$((SECONDS + PG_WAIT_SECONDS))
    while ((SECONDS < deadline)); do
        pg_ready && return 0
        sleep 0.5
    done
    die "PostgreSQL on $PG_HOST:$PG_PORT was not ready within ${PG_WAIT_SECONDS}s"
}

psql_bin() {
    if command -v psql >/dev/null 2>&1; then
        command -v psql
    else
        echo "$(pg_bindir)/psql"
    fi
}

# Runs SQL as postgres/postgres over TCP.
psql_tcp() {
    PGPASSWORD=postgres PGCONNECT_TIMEOUT=5 "$(psql_bin)" -X -q -At -v ON_ERROR_STOP=1 \
        -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres "$@"
}

# The password is postgres and the database exists.
ensure_pg_db() {
    if ! psql_tcp -c 'select 1' >/dev/null 2>&1; then
        if is_root && id postgres >/dev/null 2>&1; then
            log "PostgreSQL: setting the password of user postgres"
            (cd / && runuser -u postgres -- "$(psql_bin)" -X -q -p "$PG_PORT" -d postgres \
                -v ON_ERROR_STOP=1 -c "ALTER USER postgres PASSWORD 'postgres'") >/dev/null
        fi
        psql_tcp -c 'select 1' >/dev/null \
            || die "cannot log in to PostgreSQL on $PG_HOST:$PG_PORT as postgres/postgres"
    fi
    if [[ "$(psql_tcp -c "select 1 from pg_database where datname = '$PG_DB'")" != 1 ]]; then
        log "PostgreSQL: creating database $PG_DB"
        psql_tcp -c "CREATE DATABASE $PG_DB" >/dev/null
    fi
}

install_postgres() {
    if [[ -n "$(pg_bindir)" ]] && command -v pg_ctlcluster >/dev/null 2>&1; then
        return 0
    fi
    if ! is_root; then
        die "PostgreSQL (>= 15) is not installed. Install it, e.g.: sudo apt-get install -y postgresql
  (or set FLOWS_DATABASE_URL and FLOWS_BOOTSTRAP_SERVERS to services you already run)"
    fi
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and there is no apt-get"
    log "installing PostgreSQL with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

# As root: the Debian cluster on port 5432 (made if there is none), started.
pg_up_debian() {
    install_postgres
    local bindir ver name line
    bindir="$(pg_bindir)"
    ver="$(pg_major "$bindir")"
    ((ver >= 15)) || die "PostgreSQL $ver is installed; flows needs >= 15"
    line="$(pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3 == p {print $1, $2; exit}')"
    if [[ -n "$line" ]]; then
        read -r ver name <<<"$line"
    else
        name=main
        if pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | grep -qx "$ver $name"; then
            name=flows
        fi
        log "PostgreSQL: creating cluster $ver/$name on port $PG_PORT"
        pg_createcluster -p "$PG_PORT" "$ver" "$name" >/dev/null
    fi
    # (apt-get's install may have started a new cluster already: ours all the same)
    if ! pg_ctlcluster "$ver" "$name" status >/dev/null 2>&1; then
        log "PostgreSQL: starting cluster $ver/$name"
        pg_ctlcluster "$ver" "$name" start
    fi
    echo "debian $ver $name" >"$PG_MARK"
}

# Not root: a private cluster under .cache/postgres, run as this user.
pg_up_private() {
    local bindir
    bindir="$(pg_bindir)"
    [[ -n "$bindir" ]] || install_postgres
    bindir="$(pg_bindir)"
    mkdir -p "$PG_PRIVATE"
    if [[ ! -f "$PG_PRIVATE/data/PG_VERSION" ]]; then
        log "PostgreSQL: initialising a private cluster in $PG_PRIVATE/data"
        local pw="$PG_PRIVATE/pwfile"
        echo postgres >"$pw"
        "$bindir/initdb" -D "$PG_PRIVATE/data" -U postgres --auth=scram-sha-256 \
            --pwfile="$pw" >"$PG_PRIVATE/initdb.log" 2>&1 \
            || {
                cat "$PG_PRIVATE/initdb.log" >&2
                die "initdb failed"
            }
        rm -f "$pw"
    fi
    log "PostgreSQL: starting the private cluster"
    "$bindir/pg_ctl" -D "$PG_PRIVATE/data" -l "$PG_PRIVATE/postgres.log" -w -t "$PG_WAIT_SECONDS" \
        -o "-p $PG_PORT -c listen_addresses=localhost -k $PG_PRIVATE" start >/dev/null
    echo "private $bindir" >"$PG_MARK"
}

pg_up() {
    mkdir -p "$CACHE"
    if pg_ready; then
        log "PostgreSQL: $PG_HOST:$PG_PORT is already running"
    elif is_root; then
        pg_up_debian
    else
        pg_up_private
    fi
    wait_pg
    ensure_pg_db
}

pg_down() {
    if [[ ! -f "$PG_MARK" ]]; then
        log "PostgreSQL: not started by this script; leaving it alone"
        return 0
    fi
    local kind a b
    read -r kind a b <"$PG_MARK" || true
    case "$kind" in
        debian)
            log "PostgreSQL: stopping cluster $a/$b"
            pg_ctlcluster "$a" "$b" stop || true
            ;;
        private)
            log "PostgreSQL: stopping the private cluster"
            "$a/pg_ctl" -D "$PG_PRIVATE/data" -m fast -w stop >/dev/null || true
            ;;
        *) log "PostgreSQL: unknown marker '$kind' in $PG_MARK; leaving it alone" ;;
    esac
    rm -f "$PG_MARK"
}

pg_status() {
    if pg_ready; then
        local who="not started by this script"
        [[ -f "$PG_MARK" ]] && who="started by this script"
        echo "PostgreSQL: up on $PG_HOST:$PG_PORT ($who)"
    else
        echo "PostgreSQL: down"
        return 1
    fi
}

# ----------------------------------------------------------------------------

print_addresses() {
    echo "Kafka: $KAFKA_HOST:$KAFKA_PORT"
    echo "PostgreSQL: postgresql://postgres:postgres@$PG_HOST:$PG_PORT/$PG_DB"
    echo "Schema Registry: $REGISTRY_URL"
}

cmd_up() {
    if [[ -n "${FLOWS_BOOTSTRAP_SERVERS:-}" && -n "${FLOWS_DATABASE_URL:-}" ]]; then
        echo "Using FLOWS_BOOTSTRAP_SERVERS and FLOWS_DATABASE_URL; starting nothing."
        echo "Kafka: $FLOWS_BOOTSTRAP_SERVERS"
        echo "PostgreSQL: $FLOWS_DATABASE_URL"
        echo "Schema Registry: ${FLOWS_SCHEMA_REGISTRY_URL:-$REGISTRY_URL}"
        return 0
    fi
    if docker_ok; then
        log "a Docker engine answers: docker compose up"
        compose up -d --wait
        print_addresses
        return 0
    fi
    pg_up
    # The registry's JVM boots while Kafka's does; both are waited for.
    registry_launch
    kafka_up
    registry_wait
    print_addresses
}

cmd_down() {
    kafka_down
    registry_down
    pg_down
    if docker_ok; then
        compose down
    fi
}

cmd_status() {
    local rc=0
    if docker_ok; then
        compose ps || true
    fi
    kafka_status || rc=1
    pg_status || rc=1
    registry_status || rc=1
    return "$rc"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    # one service at a time, for the outage tests (local services only)
    owned)  # exit 0 when both running services were started by this checkout's script
        our_kafka_pid >/dev/null && [[ -f "$PG_MARK" ]] ;;
    kafka-stop) kafka_down ;;
    kafka-start) kafka_up ;;
    pg-stop) pg_down ;;
    pg-start) pg_up ;;
    registry-stop) registry_down ;;
    registry-start) registry_up ;;
    *)
        echo "usage: $0 up|down|status|owned|kafka-stop|kafka-start|pg-stop|pg-start|registry-stop|registry-start" >&2
        exit 2
        ;;
esac
