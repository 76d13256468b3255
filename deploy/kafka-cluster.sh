#!/usr/bin/env bash
# A local three-node Apache Kafka 4.1.1 KRaft cluster on 127.0.0.1, for the broker-loss test
# and for trying a replicated deployment (replication 3, min.insync.replicas 2) on one
# machine. Each node is broker+controller; the three controllers form one quorum.
#
# The single-node broker (deploy/kafka.sh) stays the default for development and tests;
# this script shares its jars (`deploy/kafka.sh fetch`) and readiness check
# (`python -m services.broker wait-ready`). services/cluster.py (LocalCluster) drives it.
#
#   deploy/kafka-cluster.sh start      --data-dir D [--nodes N] [--timeout-s T] [--owner-pid PID]
#   deploy/kafka-cluster.sh stop       --data-dir D [--timeout-s T]
#   deploy/kafka-cluster.sh kill-node  --data-dir D --node I      # SIGKILL, as a crash
#   deploy/kafka-cluster.sh start-node --data-dir D --node I [--timeout-s T]
#   deploy/kafka-cluster.sh status     --data-dir D
#
# Environment:
#   CARDIOWATCH_CACHE_DIR   as for deploy/kafka.sh (jars in $CARDIOWATCH_CACHE_DIR/kafka/libs)
#   CARDIOWATCH_PYTHON      python with kafka-python (default <repo>/.venv/bin/python, python3)
#   KAFKA_CLUSTER_HEAP_OPTS JVM heap flags per node (default -Xms96m -Xmx320m: three nodes
#                           and the workers share a 2-core machine)
#
# State folder layout: bootstrap (host:port,host:port,...), node-I/{server.properties,
# broker.pid, broker.port, server.log, broker.out, kraft/}, watchdog.pid.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_CONF_DIR="$REPO_ROOT/deploy/kafka"
CACHE_ROOT="${CARDIOWATCH_CACHE_DIR:-$REPO_ROOT/.cache}"
LIBS_DIR="$CACHE_ROOT/kafka/libs"
KAFKA_VERSION="4.1.1"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

die() { echo "kafka-cluster.sh: error: $*" >&2; exit 1; }
log() { echo "kafka-cluster.sh: $*" >&2; }

python_bin() {
    if [[ -n "${CARDIOWATCH_PYTHON:-}" ]]; then echo "$CARDIOWATCH_PYTHON"
    elif [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then echo "$REPO_ROOT/.venv/bin/python"
    else echo python3; fi
}

py_admin() {
    PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$(python_bin)" -m services.broker "$@"
}

free_ports() {  # N distinct ports that were free a moment ago
    "$(python_bin)" -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()' "$1"
}

random_cluster_id() {
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* ]] && break
    done
    echo "$id"
}

# pid of node I's JVM if it is running (and really is that node), else nothing
node_pid() {
    local node_dir="$1" pid args
    [[ -f "$node_dir/broker.pid" ]] || return 0
    pid="$(cat "$node_dir/broker.pid")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    args="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$args" == *kafka.Kafka*"$node_dir/server.properties"* ]] && echo "$pid"
    return 0
}

write_properties() {
    local node_dir="$1" id="$2" port="$3" cport="$4" voters="$5" n="$6"
    local min_isr=$(( n >= 3 ? 2 : 1 ))
    cat >"$node_dir/server.properties" <<EOF
# Written by deploy/kafka-cluster.sh start: node $id of a local $n-node KRaft cluster.
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$node_dir/kraft
num.partitions=1
default.replication.factor=$n
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$n
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$n
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=$n
share.coordinator.state.topic.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
unclean.leader.election.enable=false
delete.topic.enable=true
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
log.retention.hours=24
# A killed node is fenced (and dropped from every ISR) after 4 s instead of 9 s.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=500
replica.lag.time.max.ms=10000
EOF
}

launch_node() {
    local node_dir="$1" pid
    local heap="${KAFKA_CLUSTER_HEAP_OPTS:--Xms96m -Xmx320m}"
    # shellcheck disable=SC2086  # heap flags are a word list on purpose
    setsid nohup "$JAVA" $heap -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        "-Dlog4j2.configurationFile=$KAFKA_CONF_DIR/log4j2.properties" "-Dkafka.logs.dir=$node_dir" \
        -cp "$LIBS_DIR/*" kafka.Kafka "$node_dir/server.properties" \
        </dev/null >"$node_dir/broker.out" 2>&1 &
    pid=$!
    echo "$pid" >"$node_dir/broker.pid"
}

wait_node() {
    local node_dir="$1" timeout_s="$2"
    py_admin wait-ready --bootstrap "127.0.0.1:$(cat "$node_dir/broker.port")" --timeout-s "$timeout_s" \
        --pid "$(cat "$node_dir/broker.pid")" --log "$node_dir/server.log" --log "$node_dir/broker.out"
}

parse_common() {  # sets data_dir, timeout_s, node, nodes, owner_pid from the arguments
    data_dir="" timeout_s=120 node="" nodes=3 owner_pid=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --data-dir) data_dir="$2"; shift 2 ;;
            --timeout-s) timeout_s="$2"; shift 2 ;;
            --node) node="$2"; shift 2 ;;
            --nodes) nodes="$2"; shift 2 ;;
            --owner-pid) owner_pid="$2"; shift 2 ;;
            *) die "unknown argument '$1'" ;;
        esac
    done
    [[ -n "$data_dir" ]] || die "--data-dir is required"
    mkdir -p "$data_dir"
    data_dir="$(cd "$data_dir" && pwd)"
}

node_dir_of() {
    [[ "$1" =~ ^[0-9]+$ && -d "$data_dir/node-$1" ]] || die "no node '$1' in $data_dir"
    echo "$data_dir/node-$1"
}

cmd_start() {
    parse_common "$@"
    [[ "$nodes" =~ ^[0-9]+$ ]] && (( nodes >= 1 && nodes <= 9 )) || die "--nodes must be in [1, 9], got '$nodes'"
    [[ -f "$LIBS_DIR/kafka_2.13-$KAFKA_VERSION.jar" ]] || "$REPO_ROOT/deploy/kafka.sh" fetch
    local i pid
    for i in $(seq 1 "$nodes"); do
        pid="$(node_pid "$data_dir/node-$i")"
        [[ -z "$pid" ]] || die "node $i of $data_dir is already running (pid $pid)"
    done
    local -a ports
    read -r -a ports <<<"$(free_ports $((2 * nodes)))"
    local voters="" bootstrap=""
    for i in $(seq 1 "$nodes"); do
        voters+="${voters:+,}$i@127.0.0.1:${ports[$((nodes + i - 1))]}"
        bootstrap+="${bootstrap:+,}127.0.0.1:${ports[$((i - 1))]}"
    done
    local cluster_id
    cluster_id="$(random_cluster_id)"
    for i in $(seq 1 "$nodes"); do
        local nd="$data_dir/node-$i"
        rm -rf "$nd"
        mkdir -p "$nd"
        write_properties "$nd" "$i" "${ports[$((i - 1))]}" "${ports[$((nodes + i - 1))]}" "$voters" "$nodes"
        echo "${ports[$((i - 1))]}" >"$nd/broker.port"
        "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
            "-Dlog4j2.configurationFile=$KAFKA_CONF_DIR/log4j2.properties" "-Dkafka.logs.dir=$nd" \
            -cp "$LIBS_DIR/*" kafka.tools.StorageTool format -t "$cluster_id" -c "$nd/server.properties" \
            >"$nd/format.out" 2>&1 || die "formatting node $i failed: $(tail -n 20 "$nd/format.out")"
    done
    for i in $(seq 1 "$nodes"); do launch_node "$data_dir/node-$i"; done
    echo "$bootstrap" >"$data_dir/bootstrap"
    if [[ -n "$owner_pid" ]]; then
        setsid "$0" _watchdog "$owner_pid" "$data_dir" </dev/null >/dev/null 2>&1 &
        echo $! >"$data_dir/watchdog.pid"
    fi
    for i in $(seq 1 "$nodes"); do
        if ! wait_node "$data_dir/node-$i" "$timeout_s"; then
            cmd_stop --data-dir "$data_dir" --timeout-s 5 || true
            die "node $i did not become ready (see $data_dir/node-$i/server.log)"
        fi
    done
    log "$nodes-node cluster ready: $bootstrap (state $data_dir)"
    echo "$bootstrap"
}

cmd_kill_node() {
    parse_common "$@"
    local nd pid
    nd="$(node_dir_of "$node")"
    pid="$(node_pid "$nd")"
    [[ -n "$pid" ]] || die "node $node is not running"
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$nd/broker.pid"
    log "killed node $node (pid $pid)"
}

cmd_start_node() {
    parse_common "$@"
    local nd pid
    nd="$(node_dir_of "$node")"
    pid="$(node_pid "$nd")"
    [[ -z "$pid" ]] || die "node $node is already running (pid $pid)"
    launch_node "$nd"
    wait_node "$nd" "$timeout_s" || die "node $node did not come back (see $nd/server.log)"
    log "node $node back on 127.0.0.1:$(cat "$nd/broker.port")"
}

cmd_stop() {
    parse_common "$@"
    local nd pid
    local -a pids=()
    for nd in "$data_dir"/node-*; do
        [[ -d "$nd" ]] || continue
        pid="$(node_pid "$nd")"
        [[ -z "$pid" ]] || { kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); }
    done
    local deadline=$((SECONDS + timeout_s))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
            while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
        fi
    done
    rm -f "$data_dir"/node-*/broker.pid
    if [[ -f "$data_dir/watchdog.pid" ]]; then
        kill -TERM "$(cat "$data_dir/watchdog.pid")" 2>/dev/null || true
        rm -f "$data_dir/watchdog.pid"
    fi
    log "stopped ${#pids[@]} node(s) of $data_dir"
}

cmd_status() {
    parse_common "$@"
    local nd pid up=0
    for nd in "$data_dir"/node-*; do
        [[ -d "$nd" ]] || continue
        pid="$(node_pid "$nd")"
        if [[ -n "$pid" ]]; then up=$((up + 1)); echo "${nd##*/} running pid=$pid port=$(cat "$nd/broker.port")"
        else echo "${nd##*/} stopped port=$(cat "$nd/broker.port" 2>/dev/null)"; fi
    done
    (( up > 0 )) || return 3
}

# Stop every node when the owner (a test session) dies without stopping the cluster; a
# state folder marked .remove-when-orphaned is removed afterwards.
cmd_watchdog() {
    local owner_pid="$1" data_dir="$2"
    while kill -0 "$owner_pid" 2>/dev/null; do sleep 1; done
    local nd pid
    for nd in "$data_dir"/node-*; do
        pid="$(node_pid "$nd")"
        [[ -z "$pid" ]] || kill -KILL "$pid" 2>/dev/null || true
    done
    sleep 1
    [[ -f "$data_dir/.remove-when-orphaned" ]] && rm -rf "$data_dir"
    return 0
}

main() {
    [[ $# -ge 1 ]] || die "usage: $0 {start|stop|kill-node|start-node|status} --data-dir D [options]"
    local cmd="$1"; shift
    case "$cmd" in
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        kill-node) cmd_kill_node "$@" ;;
        start-node) cmd_start_node "$@" ;;
        status) cmd_status "$@" ;;
        _watchdog) cmd_watchdog "$@" ;;
        -h|--help|help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' ;;
        *) die "unknown command '$cmd' (expected start, stop, kill-node, start-node, status)" ;;
    esac
}

main "$@"
