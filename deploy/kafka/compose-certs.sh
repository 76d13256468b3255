#!/usr/bin/env bash
# TLS material and passwords for docker-compose.secure.yml, made with the JDK's keytool only
# (the apache/kafka image has no openssl; deploy/kafka.sh certs is the local broker's twin).
#
#   compose-certs.sh BROKER_DIR CLIENT_DIR
#
# BROKER_DIR (the kafka service's /etc/kafka/secrets): broker.p12 (key + chain; SANs kafka,
#   localhost, 127.0.0.1), keystore.password, admin.password, kafka_server_jaas.conf (the
#   PLAIN admin user for inter-broker and kafka-init; SCRAM users live in the cluster),
#   admin.properties (client config for the Kafka CLI tools), ca.p12 (the CA's key).
# CLIENT_DIR (read-only in the app containers): ca.pem, client.password.
# Idempotent: what the folders hold is kept, so a restart keeps its certificates.
set -euo pipefail

broker_dir="${1:?usage: compose-certs.sh BROKER_DIR CLIENT_DIR}"
client_dir="${2:?usage: compose-certs.sh BROKER_DIR CLIENT_DIR}"
mkdir -p "$broker_dir" "$client_dir"
secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
umask 077
for f in keystore.password admin.password; do
    [[ -s "$broker_dir/$f" ]] || secret >"$broker_dir/$f"
done
[[ -s "$client_dir/client.password" ]] || secret >"$client_dir/client.password"
pw="$(cat "$broker_dir/keystore.password")"
kt() { keytool "$@" -storepass "$pw" >/dev/null 2>"$broker_dir/keytool.err" \
       || { cat "$broker_dir/keytool.err" >&2; exit 1; }; }

if [[ ! -s "$broker_dir/broker.p12" || ! -s "$client_dir/ca.pem" ]]; then
    rm -f "$broker_dir/ca.p12" "$broker_dir/broker.p12" "$broker_dir/broker.csr" "$broker_dir/broker.crt"
    kt -genkeypair -alias ca -dname "CN=cardiowatch compose CA" -keyalg RSA -keysize 2048 -validity 825 \
        -ext bc:c -ext KeyUsage=keyCertSign,cRLSign -keystore "$broker_dir/ca.p12" -storetype PKCS12
    kt -exportcert -rfc -alias ca -keystore "$broker_dir/ca.p12" -file "$client_dir/ca.pem"
    kt -genkeypair -alias broker -dname "CN=kafka" -keyalg RSA -keysize 2048 -validity 825 \
        -keystore "$broker_dir/broker.p12" -storetype PKCS12
    kt -certreq -alias broker -keystore "$broker_dir/broker.p12" -file "$broker_dir/broker.csr"
    kt -gencert -alias ca -keystore "$broker_dir/ca.p12" -infile "$broker_dir/broker.csr" \
        -outfile "$broker_dir/broker.crt" -rfc -validity 825 \
        -ext "SAN=dns:kafka,dns:localhost,ip:127.0.0.1" -ext "EKU=serverAuth,clientAuth"
    kt -importcert -noprompt -alias ca -file "$client_dir/ca.pem" -keystore "$broker_dir/broker.p12"
    kt -importcert -alias broker -file "$broker_dir/broker.crt" -keystore "$broker_dir/broker.p12"
    rm -f "$broker_dir/broker.csr" "$broker_dir/broker.crt" "$broker_dir/keytool.err"
fi
admin="$(cat "$broker_dir/admin.password")"
plain="org.apache.kafka.common.security.plain.PlainLoginModule required"
printf 'KafkaServer {\n  %s username="admin" password="%s" user_admin="%s";\n  %s;\n};\n' \
    "$plain" "$admin" "$admin" "org.apache.kafka.common.security.scram.ScramLoginModule required" \
    >"$broker_dir/kafka_server_jaas.conf"
printf '%s\n' "security.protocol=SASL_SSL" "sasl.mechanism=PLAIN" "ssl.truststore.type=PEM" \
    "ssl.truststore.location=$client_dir/ca.pem" \
    "sasl.jaas.config=$plain username=\"admin\" password=\"$admin\";" >"$broker_dir/admin.properties"
# The app containers run as another user: the CA and their password must be readable.
chmod 755 "$client_dir"
chmod 644 "$client_dir/ca.pem" "$client_dir/client.password"
if [[ "$(id -u)" == 0 ]] && id appuser >/dev/null 2>&1; then
    chown -R appuser "$broker_dir"   # the user the Kafka image runs the broker as
fi
echo "compose-certs: TLS material in $broker_dir and $client_dir"
