#!/usr/bin/env bash
# Local single-node Apache Kafka 4.1.1 (KRaft, broker+controller) for development and tests.
#
# The one implementation of the local broker's life cycle; services/broker.py (LocalBroker,
# `cardiowatch broker ...`) calls this script. Readiness checks and topic creation go the
# other way, through `python -m services.broker wait-ready|create-topics` (kafka-python).
#
#   deploy/kafka.sh fetch  [--force | --check]
#   deploy/kafka.sh start  [--port P] [--data-dir D] [--timeout-s T] [--owner-pid PID] [--fresh]
#                          [--security plaintext|sasl_ssl] [--mtls-port P2]
#   deploy/kafka.sh certs  --dir D [--san DNS:name,IP:addr,...]
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
#
# Secured broker (`start --security sasl_ssl`): the client port is a SASL_SSL listener
# (SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN; no plaintext client listener at all), and
# `--mtls-port` adds an SSL listener that requires a client certificate. At the first
# start the state folder gets tls/ (a CA, the broker's PKCS12 keystore, a client
# certificate and key, all made with openssl and the JDK's keytool; see `certs`) and
# random passwords for the SCRAM users `admin` (inter-broker, topic admin) and
# `cardiowatch` (the services), created in the KRaft metadata when storage is formatted.
# client.env and admin.env hold the CARDIOWATCH_KAFKA_* settings for those users
# (services/settings.py reads them); broker.security says which mode is running.
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

# True when the cache holds the jars of the current deploy/kafka/pom.xml.
libs_current() {
    local stamp_file="$LIBS_DIR/.pom.sha256"
    [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$(pom_stamp)" \
       && -f "$LIBS_DIR/kafka_2.13-$KAFKA_VERSION.jar" ]]
}

cmd_fetch() {
    local force=0
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --force) force=1; shift ;;
            # exit 0 if the jars are cached, 1 if a fetch would download them; fetch nothing
            --check) libs_current; return ;;
            *) die "fetch: unknown argument '$1'" ;;
        esac
    done
    mkdir -p "$CACHE_ROOT/kafka"
    # One fetch at a time: parallel test sessions may all ask for the jars.
    exec 9>"$CACHE_ROOT/kafka/.fetch.lock"
    flock 9
    if [[ $force == 0 ]] && libs_current; then
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

# --- TLS material and SASL users (secured broker) ------------------------------------
random_secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# Make, in folder --dir, a CA (ca.pem, ca.key), the broker's certificate in a PKCS12
# keystore (broker.p12; SANs 127.0.0.1, localhost and --san), the broker's truststore
# (truststore.p12: the CA, for client certificates) and a client certificate + key for
# mutual TLS (client.pem, client.key). What is there already is kept. Passwords go to
# secrets.env (mode 600).
cmd_certs() {
    local dir="" san=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dir) dir="$2"; shift 2 ;;
            --san) san="$2"; shift 2 ;;
            *) die "certs: unknown argument '$1'" ;;
        esac
    done
    [[ -n "$dir" ]] || die "certs: --dir is required"
    command -v openssl >/dev/null || die "certs needs openssl on PATH"
    command -v keytool >/dev/null || die "certs needs the JDK's keytool on PATH"
    mkdir -p "$dir"
    chmod 700 "$dir"
    if [[ ! -f "$dir/secrets.env" ]]; then
        (umask 077; printf 'KEYSTORE_PASSWORD=%s\nADMIN_PASSWORD=%s\nCLIENT_PASSWORD=%s\n' \
            "$(random_secret)" "$(random_secret)" "$(random_secret)" >"$dir/secrets.env")
    fi
    # shellcheck disable=SC1091
    source "$dir/secrets.env"
    local alt="IP:127.0.0.1,DNS:localhost${san:+,$san}" olog="$dir/openssl.log"
    if [[ ! -f "$dir/ca.pem" ]]; then
        openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 825 -subj "/CN=cardiowatch local CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout "$dir/ca.key" -out "$dir/ca.pem" >"$olog" 2>&1 \
            || die "making the CA failed: $(tail -n 5 "$olog")"
        rm -f "$dir/broker.p12" "$dir/client.pem"
    fi
    if [[ ! -f "$dir/broker.p12" ]]; then
        printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$alt" >"$dir/broker.ext"
        openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=kafka-broker" \
            -keyout "$dir/broker.key" -out "$dir/broker.csr" >>"$olog" 2>&1 \
            && openssl x509 -req -in "$dir/broker.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
                -CAcreateserial -days 825 -sha256 -extfile "$dir/broker.ext" -out "$dir/broker.pem" \
                >>"$olog" 2>&1 \
            && openssl pkcs12 -export -name broker -inkey "$dir/broker.key" -in "$dir/broker.pem" \
                -certfile "$dir/ca.pem" -passout "pass:$KEYSTORE_PASSWORD" -out "$dir/broker.p12" \
                >>"$olog" 2>&1 \
            || die "making the broker certificate failed: $(tail -n 5 "$olog")"
        # A trusted-certificate entry, which only keytool writes (Java ignores a PKCS12
        # from openssl that holds a bare certificate).
        rm -f "$dir/truststore.p12"
        keytool -importcert -noprompt -alias cardiowatch-ca -file "$dir/ca.pem" \
            -keystore "$dir/truststore.p12" -storetype PKCS12 -storepass "$KEYSTORE_PASSWORD" \
            >>"$olog" 2>&1 || die "keytool could not write the truststore: $(tail -n 5 "$olog")"
        rm -f "$dir/broker.csr" "$dir/broker.ext" "$dir/broker.key"
    fi
    if [[ ! -f "$dir/client.pem" ]]; then
        printf 'extendedKeyUsage=clientAuth\n' >"$dir/client.ext"
        openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=cardiowatch" \
            -keyout "$dir/client.key" -out "$dir/client.csr" >>"$olog" 2>&1 \
            && openssl x509 -req -in "$dir/client.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
                -CAcreateserial -days 825 -sha256 -extfile "$dir/client.ext" -out "$dir/client.pem" \
                >>"$olog" 2>&1 \
            || die "making the client certificate failed: $(tail -n 5 "$olog")"
        rm -f "$dir/client.csr" "$dir/client.ext"
    fi
    chmod 600 "$dir"/*.key "$dir"/*.p12 "$dir/secrets.env"
    chmod 644 "$dir/ca.pem" "$dir/client.pem"
    log "TLS material in $dir (CA ca.pem, broker keystore broker.p12, client client.pem + client.key)"
}

# The SASL_SSL (and optional mTLS) part of server.properties, and the client settings.
write_security_properties() {
    local data_dir="$1" port="$2" controller_port="$3" mtls_port="$4" tls="$1/tls"
    # shellcheck disable=SC1091
    source "$tls/secrets.env"
    local listeners="SASL_SSL://127.0.0.1:$port" advertised="SASL_SSL://127.0.0.1:$port"
    local map="SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    if [[ -n "$mtls_port" ]]; then
        listeners+=",MTLS://127.0.0.1:$mtls_port"; advertised+=",MTLS://127.0.0.1:$mtls_port"
        map+=",MTLS:SSL"
    fi
    # No plaintext client listener: replace write_properties' listener lines.
    sed -i -e "s|^listeners=.*|listeners=$listeners,CONTROLLER://127.0.0.1:$controller_port|" \
        -e "s|^advertised.listeners=.*|advertised.listeners=$advertised|" \
        -e "s|^listener.security.protocol.map=.*|listener.security.protocol.map=$map|" \
        -e "s|^inter.broker.listener.name=.*|inter.broker.listener.name=SASL_SSL|" \
        "$data_dir/server.properties"
    local scram="org.apache.kafka.common.security.scram.ScramLoginModule required"
    local plain="org.apache.kafka.common.security.plain.PlainLoginModule required"
    {
        echo "# --- secured broker (deploy/kafka.sh start --security sasl_ssl) ---"
        echo "sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN"
        echo "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512"
        echo "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram username=\"admin\" password=\"$ADMIN_PASSWORD\";"
        echo "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$scram;"
        echo "listener.name.sasl_ssl.plain.sasl.jaas.config=$plain username=\"admin\" password=\"$ADMIN_PASSWORD\" user_admin=\"$ADMIN_PASSWORD\" user_cardiowatch=\"$CLIENT_PASSWORD\";"
        echo "ssl.keystore.type=PKCS12"
        echo "ssl.keystore.location=$tls/broker.p12"
        echo "ssl.keystore.password=$KEYSTORE_PASSWORD"
        echo "ssl.key.password=$KEYSTORE_PASSWORD"
        echo "ssl.truststore.type=PKCS12"
        echo "ssl.truststore.location=$tls/truststore.p12"
        echo "ssl.truststore.password=$KEYSTORE_PASSWORD"
        echo "ssl.enabled.protocols=TLSv1.3,TLSv1.2"
        echo "ssl.client.auth=none"
        echo "listener.name.mtls.ssl.client.auth=required"
    } >>"$data_dir/server.properties"
    chmod 600 "$data_dir/server.properties"
    # CARDIOWATCH_KAFKA_* settings (services/settings.py) for the two SCRAM users.
    local user file pass
    for user in cardiowatch admin; do
        if [[ $user == admin ]]; then file=admin.env pass="$ADMIN_PASSWORD"; else file=client.env pass="$CLIENT_PASSWORD"; fi
        (umask 077; printf '%s\n' "CARDIOWATCH_KAFKA_SECURITY_PROTOCOL=SASL_SSL" \
            "CARDIOWATCH_KAFKA_SSL_CAFILE=$tls/ca.pem" "CARDIOWATCH_KAFKA_SASL_MECHANISM=SCRAM-SHA-512" \
            "CARDIOWATCH_KAFKA_SASL_USERNAME=$user" "CARDIOWATCH_KAFKA_SASL_PASSWORD=$pass" \
            >"$data_dir/$file")
    done
}

# Arguments to `kafka-storage format` that create the SCRAM users, one per line.
scram_format_args() {
    # shellcheck disable=SC1091
    source "$1/tls/secrets.env"
    local m
    for m in SCRAM-SHA-512 SCRAM-SHA-256; do
        printf '%s\n' --add-scram "$m=[name=admin,password=$ADMIN_PASSWORD]" \
            --add-scram "$m=[name=cardiowatch,password=$CLIENT_PASSWORD]"
    done
}

# py_admin with the broker's own admin settings (none for a plaintext broker): the
# calling shell's CARDIOWATCH_KAFKA_* must not leak into the readiness check.
py_admin_for() {
    local data_dir="$1"; shift
    local -a env_args=()
    local v
    for v in $(compgen -e | grep '^CARDIOWATCH_KAFKA_' || true); do env_args+=(-u "$v"); done
    if [[ "$(cat "$data_dir/broker.security" 2>/dev/null || echo plaintext)" == sasl_ssl ]]; then
        mapfile -t -O "${#env_args[@]}" env_args <"$data_dir/admin.env"
    fi
    env "${env_args[@]}" PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" \
        "$(python_bin)" -m services.broker "$@"
}

cmd_start() {
    local port="${PORT:-9092}" data_dir="$DEFAULT_DATA_DIR" timeout_s=90 owner_pid="" fresh=0
    local security=plaintext mtls_port=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --security) security="$2"; shift 2 ;;
            --mtls-port) mtls_port="$2"; shift 2 ;;
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
    [[ "$security" == plaintext || "$security" == sasl_ssl ]] \
        || die "start: --security must be plaintext or sasl_ssl, got '$security'"
    if [[ -n "$mtls_port" ]]; then
        [[ "$security" == sasl_ssl ]] || die "start: --mtls-port needs --security sasl_ssl"
        [[ "$mtls_port" =~ ^[0-9]+$ ]] && (( mtls_port >= 1 && mtls_port <= 65535 )) \
            || die "start: --mtls-port must be in [1, 65535], got '$mtls_port'"
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
    local -a format_extra=()
    if [[ "$security" == sasl_ssl ]]; then
        if [[ -f "$data_dir/kraft/meta.properties" && "$(cat "$data_dir/broker.security" 2>/dev/null)" != sasl_ssl ]]; then
            die "start: $data_dir holds a plaintext broker's data (no SCRAM users); add --fresh"
        fi
        cmd_certs --dir "$data_dir/tls"
        write_security_properties "$data_dir" "$port" "$controller_port" "$mtls_port"
        mapfile -t format_extra < <(scram_format_args "$data_dir")
    fi
    echo "$security" >"$data_dir/broker.security"
    if [[ -n "$mtls_port" ]]; then echo "$mtls_port" >"$data_dir/broker.mtls_port"; else rm -f "$data_dir/broker.mtls_port"; fi
    local heap="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
    local -a log_opts=("-Dlog4j2.configurationFile=$KAFKA_CONF_DIR/log4j2.properties"
                       "-Dkafka.logs.dir=$data_dir")
    if [[ ! -f "$data_dir/kraft/meta.properties" ]]; then
        # Short-lived JVM: C1 only starts faster.
        "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 "${log_opts[@]}" -cp "$LIBS_DIR/*" \
            kafka.tools.StorageTool format -t "$(random_cluster_id)" \
            -c "$data_dir/server.properties" "${format_extra[@]}" >"$data_dir/format.out" 2>&1 \
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
    if ! py_admin_for "$data_dir" wait-ready --bootstrap "127.0.0.1:$port" --timeout-s "$timeout_s" \
            --pid "$pid" --log "$data_dir/server.log" --log "$data_dir/broker.out"; then
        cmd_stop --data-dir "$data_dir" --timeout-s 10 || true
        die "broker on 127.0.0.1:$port did not become ready (see $data_dir/server.log)"
    fi
    log "broker ready on 127.0.0.1:$port ($security${mtls_port:+, mTLS on $mtls_port}) after $((SECONDS - t0)) s (pid $pid, state $data_dir)"
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
        py_admin_for "$data_dir" create-topics --bootstrap "$bootstrap" --partitions "$partitions"
        return
    fi
    py_admin create-topics --bootstrap "$bootstrap" --partitions "$partitions"
}

main() {
    [[ $# -ge 1 ]] || die "usage: $0 {fetch|start|stop|status|create-topics|certs} [options]"
    local cmd="$1"; shift
    case "$cmd" in
        fetch) cmd_fetch "$@" ;;
        start) cmd_start "$@" ;;
        certs) cmd_certs "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        create-topics) cmd_create_topics "$@" ;;
        _watchdog) cmd_watchdog "$@" ;;
        -h|--help|help) sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//' ;;
        *) die "unknown command '$cmd' (expected fetch, start, stop, status, create-topics, certs)" ;;
    esac
}

main "$@"
