#!/usr/bin/env bash
# Local single-node Apache Kafka 4.1.1 (KRaft, broker+controller) for development and tests.
#
# The one implementation of the local broker's life cycle; services/broker.py (LocalBroker,
# `cardiowatch broker ...`) calls this script. Readiness checks and topic creation go the
# other way, through `python -m services.broker wait-ready|create-topics` (kafka-python).
#
#   deploy/kafka.sh fetch  [--force]
#   deploy/kafka.sh start  [--port P] [--data-dir D] [--timeout-s T] [--owner-pid PID] [--fresh]
#   deploy/kafka.sh stop   [--data-dir D] [--timeout-s T]
#   deploy/kafka.sh status [--data-dir D]
#   deploy/kafka.sh create-topics [--bootstrap HOST:PORT | --data-dir D] [--partitions N]
#
# Environment:
#   CARDIOWATCH_CACHE_DIR   cache root outside git (default <repo>/.cache); jars go to
#                           $CARDIOWATCH_CACHE_DIR/kafka/libs, the default broker state to
#                           $CARDIOWATCH_CACHE_DIR/kafka/run
#   PORT                    client port for `start` when --port is not given (default 9092)
#   CARDIOWATCH_KAFKA_DATA_DIR  broker state folder when --data-dir is not given
#   CARDIOWATCH_PARTITIONS  partitions per project topic for create-topics (default 8)
#   CARDIOWATCH_PYTHON      python with kafka-python (default <repo>/.venv/bin/python, python3)
#   KAFKA_HEAP_OPTS         JVM heap flags (default -Xms128m -Xmx512m)
#
# State folder layout: server.properties, broker.pid, broker.port, server.log (log4j2),
# broker.out (JVM stdout/stderr), kraft/ (log.dirs).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_CONF_DIR="$REPO_ROOT/deploy/kafka"
CACHE_ROOT="${CARDIOWATCH_CACHE_DIR:-$REPO_ROOT/.cache}"
LIBS_DIR="$CACHE_ROOT/kafka/libs"
DEFAULT_DATA_DIR="${CARDIOWATCH_KAFKA_DATA_DIR:-$CACHE_ROOT/kafka/run}"
KAFKA_VERSION="4.1.1"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

die() { echo "kafka.sh: error: $*" >&2; exit 1; }
log() { echo "kafka.sh: $*" >&2; }

python_bin() {
    if [[ -n "${CARDIOWATCH_PYTHON:-}" ]]; then
        echo "$CARDIOWATCH_PYTHON"
    elif [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
        echo "$REPO_ROOT/.venv/bin/python"
    else
        echo python3
    fi
}

# Run `python -m services.broker ...` from this checkout (kafka-python admin calls).
py_admin() {
    PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$(python_bin)" -m services.broker "$@"
}

pom_stamp() { sha256sum "$KAFKA_CONF_DIR/pom.xml" | cut -d' ' -f1; }

cmd_fetch() {
    local force=0
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --force) force=1; shift ;;
            *) die "fetch: unknown argument '$1'" ;;
        esac
    done
    mkdir -p "$CACHE_ROOT/kafka"
    # One fetch at a time: parallel test sessions may all ask for the jars.
    exec 9>"$CACHE_ROOT/kafka/.fetch.lock"
    flock 9
    local stamp_file="$LIBS_DIR/.pom.sha256"
    if [[ $force == 0 && -f "$stamp_file" && "$(cat "$stamp_file")" == "$(pom_stamp)" \
          && -f "$LIBS_DIR/kafka_2.13-$KAFKA_VERSION.jar" ]]; then
        log "Kafka $KAFKA_VERSION jars already in $LIBS_DIR"
        return 0
    fi
    command -v mvn >/dev/null || die "fetch needs Maven (mvn) on PATH to download Kafka $KAFKA_VERSION"
    local tmp="$LIBS_DIR.tmp.$$"
    rm -rf "$tmp"
    log "fetching Kafka $KAFKA_VERSION and its runtime dependencies into $LIBS_DIR"
    # (sed strips the colour codes Maven 3.8 prints even in batch mode)
    if ! mvn -q -B -Dstyle.color=never -f "$KAFKA_CONF_DIR/pom.xml" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 \
            | sed -e 's/\x1b\[[0-9;]*m//g' -e '/^$/d' >&2; then
        rm -rf "$tmp"
        die "mvn dependency:copy-dependencies failed for $KAFKA_CONF_DIR/pom.xml"
    fi
    [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || die "kafka_2.13-$KAFKA_VERSION.jar missing after fetch"
    pom_stamp >"$tmp/.pom.sha256"
    rm -rf "$LIBS_DIR"
    mv "$tmp" "$LIBS_DIR"
    log "fetched $(find "$LIBS_DIR" -name '*.jar' | wc -l) jars"
}

ensure_libs() {
    [[ -f "$LIBS_DIR/kafka_2.13-$KAFKA_VERSION.jar" ]] \
        || die "Kafka jars not found in $LIBS_DIR; run: deploy/kafka.sh fetch"
}

# Print the pid of the broker of this state folder if it is running, else nothing.
running_pid() {
    local data_dir="$1" pid
    [[ -f "$data_dir/broker.pid" ]] || return 0
    pid="$(cat "$data_dir/broker.pid")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    # The pid must still be *our* broker (pids get reused).
    local args
    if [[ -r "/proc/$pid/cmdline" ]]; then
        args="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    else
        args="$(ps -ww -o args= -p "$pid" 2>/dev/null || true)"
    fi
    if [[ "$args" == *kafka.Kafka*"$data_dir/server.properties"* ]]; then
        echo "$pid"
    fi
}

free_port() {
    "$(python_bin)" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

random_cluster_id() {
    # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding, not starting with '-'.
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* ]] && break
    done
    echo "$id"
}

write_properties() {
    local data_dir="$1" port="$2" controller_port="$3"
    cat >"$data_dir/server.properties" <<EOF
# Written by deploy/kafka.sh start; single-node KRaft broker for local runs and tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$data_dir/kraft
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
# 50 by default; a handful keeps the first consumer-group join fast on a laptop.
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
num.network.threads=2
num.io.threads=4
log.retention.hours=24
EOF
}

cmd_start() {
    local port="${PORT:-9092}" data_dir="$DEFAULT_DATA_DIR" timeout_s=90 owner_pid="" fresh=0
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --port) port="$2"; shift 2 ;;
            --data-dir) data_dir="$2"; shift 2 ;;
            --timeout-s) timeout_s="$2"; shift 2 ;;
            --owner-pid) owner_pid="$2"; shift 2 ;;
            --fresh) fresh=1; shift ;;
            *) die "start: unknown argument '$1'" ;;
        esac
    done
    if ! [[ "$port" =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
        die "start: port must be in [1, 65535], got '$port'"
    fi
    ensure_libs
    mkdir -p "$data_dir"
    data_dir="$(cd "$data_dir" && pwd)"
    local pid
    pid="$(running_pid "$data_dir")"
    [[ -z "$pid" ]] || die "a broker is already running from $data_dir (pid $pid, port $(cat "$data_dir/broker.port" 2>/dev/null))"
    if [[ $fresh == 1 ]]; then
        rm -rf "$data_dir/kraft"
    fi
    local controller_port
    controller_port="$(free_port)"
    [[ "$controller_port" != "$port" ]] || controller_port="$(free_port)"
    write_properties "$data_dir" "$port" "$controller_port"
    local heap="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
    local -a log_opts=("-Dlog4j2.configurationFile=$KAFKA_CONF_DIR/log4j2.properties"
                       "-Dkafka.logs.dir=$data_dir")
    if [[ ! -f "$data_dir/kraft/meta.properties" ]]; then
        # Short-lived JVM: C1 only starts faster.
        "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 "${log_opts[@]}" -cp "$LIBS_DIR/*" \
            kafka.tools.StorageTool format -t "$(random_cluster_id)" \
            -c "$data_dir/server.properties" >"$data_dir/format.out" 2>&1 \
            || die "formatting storage failed: $(tail -n 20 "$data_dir/format.out")"
    fi
    echo "$port" >"$data_dir/broker.port"
    # setsid: a signal to the caller's process group (Ctrl-C, `timeout`) must not hit the
    # broker half-way; its owner's watchdog or `stop` ends it. (The background child is not
    # a group leader, so setsid execs in place and $! is the JVM's pid.)
    # shellcheck disable=SC2086  # heap flags are a word list on purpose
    setsid nohup "$JAVA" $heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
        -Djava.awt.headless=true "${log_opts[@]}" -cp "$LIBS_DIR/*" \
        kafka.Kafka "$data_dir/server.properties" \
        </dev/null >"$data_dir/broker.out" 2>&1 &
    pid=$!
    echo "$pid" >"$data_dir/broker.pid"
    if [[ -n "$owner_pid" ]]; then
        setsid "$0" _watchdog "$owner_pid" "$pid" "$data_dir" </dev/null >/dev/null 2>&1 &
        echo $! >"$data_dir/watchdog.pid"
    fi
    local t0=$SECONDS
    if ! py_admin wait-ready --bootstrap "127.0.0.1:$port" --timeout-s "$timeout_s" \
            --pid "$pid" --log "$data_dir/server.log" --log "$data_dir/broker.out"; then
        cmd_stop --data-dir "$data_dir" --timeout-s 10 || true
        die "broker on 127.0.0.1:$port did not become ready (see $data_dir/server.log)"
    fi
    log "broker ready on 127.0.0.1:$port after $((SECONDS - t0)) s (pid $pid, state $data_dir)"
    echo "127.0.0.1:$port"
}

# Stop the broker when the owning process (a test session) dies without stopping it, so no
# JVM outlives its owner. A state folder marked .remove-when-orphaned (LocalBroker's
# temporary ones) is removed afterwards.
cmd_watchdog() {
    local owner_pid="$1" pid="$2" data_dir="$3"
    while kill -0 "$owner_pid" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do sleep 1; done
    kill -0 "$owner_pid" 2>/dev/null && return 0   # broker ended first: nothing to do
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
    if [[ -f "$data_dir/.remove-when-orphaned" ]]; then
        rm -rf "$data_dir"
    fi
}

cmd_stop() {
    local data_dir="$DEFAULT_DATA_DIR" timeout_s=30
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --data-dir) data_dir="$2"; shift 2 ;;
            --timeout-s) timeout_s="$2"; shift 2 ;;
            *) die "stop: unknown argument '$1'" ;;
        esac
    done
    [[ -d "$data_dir" ]] || { log "no broker state in $data_dir; nothing to stop"; return 0; }
    data_dir="$(cd "$data_dir" && pwd)"
    local pid
    pid="$(running_pid "$data_dir")"
    if [[ -n "$pid" ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + timeout_s))
        while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            log "broker pid $pid still up after ${timeout_s} s of SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
        fi
        log "stopped broker pid $pid"
    else
        log "no broker running from $data_dir"
    fi
    if [[ -f "$data_dir/watchdog.pid" ]]; then
        local wpid
        wpid="$(cat "$data_dir/watchdog.pid")"
        if [[ "$wpid" =~ ^[0-9]+$ ]]; then kill -TERM "$wpid" 2>/dev/null || true; fi
        rm -f "$data_dir/watchdog.pid"
    fi
    rm -f "$data_dir/broker.pid"
}

cmd_status() {
    local data_dir="$DEFAULT_DATA_DIR"
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --data-dir) data_dir="$2"; shift 2 ;;
            *) die "status: unknown argument '$1'" ;;
        esac
    done
    local pid=""
    if [[ -d "$data_dir" ]]; then
        data_dir="$(cd "$data_dir" && pwd)"
        pid="$(running_pid "$data_dir")"
    fi
    if [[ -n "$pid" ]]; then
        echo "running pid=$pid bootstrap=127.0.0.1:$(cat "$data_dir/broker.port") state=$data_dir"
    else
        echo "stopped state=$data_dir"
        return 3  # LSB: program is not running
    fi
}

cmd_create_topics() {
    local bootstrap="" data_dir="$DEFAULT_DATA_DIR" partitions="${CARDIOWATCH_PARTITIONS:-8}"
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --bootstrap) bootstrap="$2"; shift 2 ;;
            --data-dir) data_dir="$2"; shift 2 ;;
            --partitions) partitions="$2"; shift 2 ;;
            *) die "create-topics: unknown argument '$1'" ;;
        esac
    done
    if [[ -z "$bootstrap" ]]; then
        [[ -f "$data_dir/broker.port" ]] || die "create-topics: no --bootstrap and no broker state in $data_dir"
        bootstrap="127.0.0.1:$(cat "$data_dir/broker.port")"
    fi
    py_admin create-topics --bootstrap "$bootstrap" --partitions "$partitions"
}

main() {
    [[ $# -ge 1 ]] || die "usage: $0 {fetch|start|stop|status|create-topics} [options]"
    local cmd="$1"; shift
    case "$cmd" in
        fetch) cmd_fetch "$@" ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        create-topics) cmd_create_topics "$@" ;;
        _watchdog) cmd_watchdog "$@" ;;
        -h|--help|help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' ;;
        *) die "unknown command '$cmd' (expected fetch, start, stop, status, create-topics)" ;;
    esac
}

main "$@"
