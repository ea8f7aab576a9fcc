#!/usr/bin/env bash
# Local services for Fairway development and CI: RabbitMQ and a MongoDB-compatible DB.
#
# Usage: scripts/services.sh up|down|status|start-rabbitmq|stop-rabbitmq|restart-rabbitmq|start-mongo|stop-mongo|tls-certs
#        scripts/services.sh cluster up|down|status|env|kill NODE|stop NODE|start NODE|cut NODE|heal NODE
#
# All state (data, logs, pid files, built binaries) lives under .services/
# (override with FAIRWAY_SERVICES_DIR). Every subcommand is idempotent.
#
# The MongoDB-compatible database is FerretDB on a private PostgreSQL cluster
# (FAIRWAY_FERRETDB_BACKEND=postgresql, the default; Debian's postgresql is installed if missing)
# or on SQLite files (FAIRWAY_FERRETDB_BACKEND=sqlite); a real mongod is used if installed.
# start-mongo/stop-mongo start and stop FerretDB only; PostgreSQL stays up until `down`.
#
# Other knobs (defaults in brackets): FAIRWAY_RABBITMQ_NODE [fairway@localhost],
# FAIRWAY_RABBITMQ_PORT [5672], FAIRWAY_RABBITMQ_MGMT_PORT [15672], FAIRWAY_RABBITMQ_MQTT_PORT [1883],
# FAIRWAY_RABBITMQ_PROMETHEUS_PORT [15692], FAIRWAY_MONGO_PORT [27017], FAIRWAY_POSTGRES_PORT [5433],
# FAIRWAY_RABBITMQ_TIMEOUT [120 s], FAIRWAY_MONGO_TIMEOUT [30 s], FAIRWAY_POSTGRES_TIMEOUT [60 s].
#
# TLS (off by default; on with FAIRWAY_RABBITMQ_TLS=1, or when FAIRWAY_AMQP_URL is amqps://):
# AMQPS on 127.0.0.1:FAIRWAY_RABBITMQ_AMQPS_PORT [5671] and MQTTS on FAIRWAY_RABBITMQ_MQTTS_PORT
# [8883], besides the plain listeners, with ca.pem, server.pem and server-key.pem from
# FAIRWAY_RABBITMQ_TLS_DIR [$FAIRWAY_SERVICES_DIR/tls]. Files there are used as they are; missing
# ones are generated with openssl (a private CA, ca-key.pem, and a server certificate for
# localhost, 127.0.0.1, ::1 and FAIRWAY_RABBITMQ_TLS_NAMES, e.g. DNS:broker.example.com,IP:192.0.2.10),
# so `tls-certs` and every start are idempotent. Clients trust
# the CA with FAIRWAY_AMQP_CA_FILE=<tls dir>/ca.pem. The node reads the files at start:
# restart-rabbitmq after changing them or switching TLS on.
# The broker calls the web app's auth endpoints at FAIRWAY_BROKER_AUTH_URL [loopback HTTP,
# http://127.0.0.1:8082/broker: the web app's own auth port, FAIRWAY_BROKER_AUTH_PORT; with that 0,
# FAIRWAY_WEB_PORT]; a running node keeps the URL it started with (restart-rabbitmq); for an https:// one, FAIRWAY_BROKER_AUTH_CA_FILE names the CA its certificate must
# chain to, and the URL's host must be in it (advanced.config: 3.10's rabbitmq.conf has no keys for it).
# If FAIRWAY_AMQP_URL / FAIRWAY_MONGO_URL point anywhere other than 127.0.0.1 on those ports,
# that server is used as-is and nothing is started or stopped for it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES_DIR="${FAIRWAY_SERVICES_DIR:-$ROOT/.services}"
mkdir -p "$SERVICES_DIR"
SERVICES_DIR="$(cd "$SERVICES_DIR" && pwd)"
RUN_DIR="$SERVICES_DIR/run"
LOG_DIR="$SERVICES_DIR/logs"
BIN_DIR="$SERVICES_DIR/bin"

RABBIT_NODE="${FAIRWAY_RABBITMQ_NODE:-fairway@localhost}"
RABBIT_DIR="$SERVICES_DIR/rabbitmq"
RABBIT_PID_FILE="$RUN_DIR/rabbitmq.pid"
RABBIT_LAUNCHER_PID_FILE="$RUN_DIR/rabbitmq-launcher.pid"
RABBIT_TIMEOUT="${FAIRWAY_RABBITMQ_TIMEOUT:-120}"
# More rabbitmq.conf lines (the cluster's peer discovery); none for the single node.
RABBIT_EXTRA_CONF=""
# More emulator flags, the address of Erlang distribution, and a command prefix for the node
# (a cluster node in a network namespace).
RABBIT_EXTRA_ERL_ARGS=""
RABBIT_DIST_INTERFACE="{127,0,0,1}"
RABBIT_EXEC_PREFIX=()
RABBIT_PLUGINS="rabbitmq_management,rabbitmq_mqtt,rabbitmq_event_exchange,rabbitmq_prometheus,rabbitmq_auth_backend_http,rabbitmq_auth_backend_cache"
# Devices authenticate against the web app (fairway web); Fairway's own accounts are internal.
# fairway web serves them on FAIRWAY_BROKER_AUTH_PORT [8082], its own thread pool; 0: the web port.
WEB_AUTH_PORT="${FAIRWAY_BROKER_AUTH_PORT:-8082}"
[[ "$WEB_AUTH_PORT" != 0 ]] || WEB_AUTH_PORT="${FAIRWAY_WEB_PORT:-8080}"
WEB_AUTH_URL="${FAIRWAY_BROKER_AUTH_URL:-http://127.0.0.1:$WEB_AUTH_PORT/broker}"
# For an https:// FAIRWAY_BROKER_AUTH_URL: the CA bundle its certificate must chain to.
WEB_AUTH_CA="${FAIRWAY_BROKER_AUTH_CA_FILE:-}"
AMQP_PORT="${FAIRWAY_RABBITMQ_PORT:-5672}"
MGMT_PORT="${FAIRWAY_RABBITMQ_MGMT_PORT:-15672}"
MQTT_PORT="${FAIRWAY_RABBITMQ_MQTT_PORT:-1883}"
PROM_PORT="${FAIRWAY_RABBITMQ_PROMETHEUS_PORT:-15692}"
AMQP_URL="${FAIRWAY_AMQP_URL:-amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2F}"
AMQPS_PORT="${FAIRWAY_RABBITMQ_AMQPS_PORT:-5671}"
MQTTS_PORT="${FAIRWAY_RABBITMQ_MQTTS_PORT:-8883}"
RABBIT_TLS="${FAIRWAY_RABBITMQ_TLS:-0}"
[[ "$AMQP_URL" == amqps://* ]] && RABBIT_TLS=1
TLS_DIR="${FAIRWAY_RABBITMQ_TLS_DIR:-$SERVICES_DIR/tls}"
TLS_NAMES="DNS:localhost,IP:127.0.0.1,IP:::1${FAIRWAY_RABBITMQ_TLS_NAMES:+,$FAIRWAY_RABBITMQ_TLS_NAMES}"

MONGO_PORT="${FAIRWAY_MONGO_PORT:-27017}"
MONGO_URL="${FAIRWAY_MONGO_URL:-mongodb://127.0.0.1:$MONGO_PORT}"
MONGO_PID_FILE="$RUN_DIR/mongo.pid"
MONGO_TIMEOUT="${FAIRWAY_MONGO_TIMEOUT:-30}"
FERRETDB_VERSION=v1.24.2
FERRETDB_MODULE=github.com/FerretDB/FerretDB
FERRETDB_BIN="$BIN_DIR/ferretdb"
FERRETDB_BACKEND="${FAIRWAY_FERRETDB_BACKEND:-postgresql}"
FERRETDB_BACKEND_FILE="$RUN_DIR/ferretdb.backend"
# Rows per INSERT statement FerretDB sends (its default 100): a scheduler batch (200
# readings) then goes in one statement, ~10 us of server CPU less per stored reading
# (docs/benchmarks.md, "Database cost per reading"). tests/harness.py's private
# FerretDBs use the same value (FERRETDB_INSERT_BATCH; a unit test checks they agree).
FERRETDB_INSERT_BATCH=1000
# The Go runtime's collector of FerretDB: GOGC=400 lets its heap grow to 5x what is live
# between collections (Go's default 100: 2x). Garbage collection was ~25 % of FerretDB's
# CPU while it stored readings; with 400, FerretDB's CPU per stored reading fell ~14 us
# (~28 %) for ~20 MB more memory (docs/benchmarks.md, "FerretDB's garbage collector").
# GOMEMLIMIT caps that growth: near 1 GiB of heap it collects as often as it must.
# tests/harness.py's private FerretDBs use the same values (a unit test checks they agree).
FERRETDB_GOGC=400
FERRETDB_GOMEMLIMIT=1GiB

PG_PORT="${FAIRWAY_POSTGRES_PORT:-5433}"
PG_DIR="$SERVICES_DIR/postgres"
PG_DATA="$PG_DIR/data"
PG_LOG="$PG_DIR/postgres.log"
PG_DB=ferretdb
PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/$PG_DB"
PG_TIMEOUT="${FAIRWAY_POSTGRES_TIMEOUT:-60}"

mkdir -p "$RUN_DIR" "$LOG_DIR" "$BIN_DIR"
# rabbitmqctl and the node authenticate with ~/.erlang.cookie, so HOME must be set and stable.
if [[ -z "${HOME:-}" ]]; then
    HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
fi
export HOME

# ---------------------------------------------------------------- helpers

log() { printf 'services: %s\n' "$*"; }
warn() { printf 'services: WARNING: %s\n' "$*" >&2; }
die() {
    printf 'services: ERROR: %s\n' "$*" >&2
    exit 1
}

# Prints the pid stored in a pid file, or nothing.
read_pid() {
    local pid=""
    [[ -s "$1" ]] && pid="$(tr -dc '0-9' <"$1")"
    echo "$pid"
}

# True if the process exists and is not a zombie (PID 1 here may not reap orphans).
pid_alive() {
    local pid="${1:-}" state
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ -d /proc/self ]] || return 0 # no procfs: kill -0 is all there is to know
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
    # No state: a zombie reaped between the two looks (a killed node's VM, often).
    [[ -n "$state" && "$state" != Z ]]
}

tcp_open() { timeout 2 bash -c ">/dev/tcp/$1/$2" 2>/dev/null; }

# Sends the AMQP 0-9-1 protocol header; a broker answers with a Connection.Start method frame.
amqp_answers() {
    local host="$1" port="$2"
    command -v python3 >/dev/null || {
        tcp_open "$host" "$port"
        return
    }
    timeout 5 python3 - "$host" "$port" 2>/dev/null <<'EOF'
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.sendall(b"AMQP\x00\x00\x09\x01")
sys.exit(0 if s.recv(1) == b"\x01" else 1)
EOF
}

# "host port" of the first host in a URL like scheme://[user:pass@]host[:port][,...][/path][?query].
url_host_port() {
    local url="$1" default_port="$2" rest host
    rest="${url#*://}"
    rest="${rest%%/*}"
    rest="${rest%%\?*}"
    rest="${rest##*@}"
    rest="${rest%%,*}"
    if [[ "$rest" == \[* ]]; then # [ipv6]:port
        host="${rest%%]*}"
        host="${host#[}"
        rest="${rest#*]}"
    else
        host="${rest%%:*}"
    fi
    if [[ "$rest" == *:* ]]; then
        echo "$host ${rest##*:}"
    else
        echo "$host $default_port"
    fi
}

is_local_default() {
    local url="$1" port="$2" host p
    read -r host p <<<"$(url_host_port "$url" "$port")"
    [[ "$url" != mongodb+srv://* && ("$host" == 127.0.0.1 || "$host" == localhost) && "$p" == "$port" ]]
}

GIVE_UP=100

# wait_until TIMEOUT_S CHECK...: retries CHECK until it succeeds (returns 0) or the time is up
# (returns 1); a CHECK that returns $GIVE_UP ends the wait at once with that status.
wait_until() {
    local timeout="$1" rc
    shift
    local deadline=$((SECONDS + timeout))
    while true; do
        rc=0
        "$@" || rc=$?
        ((rc == 0 || rc == GIVE_UP)) && return "$rc"
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# Starts a daemon in its own session, detached from our stdio and lock; it writes its own pid file.
spawn() {
    local pid_file="$1" log_file="$2"
    shift 2
    rm -f "$pid_file"
    printf '\n=== %s: %s\n' "$(date '+%F %T')" "$*" >>"$log_file"
    # All of our fds are redirected: a daemon holding the caller's stdout would make
    # `make test | tee` or a CI runner wait forever for EOF.
    (
        cd "$SERVICES_DIR"
        # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell, which becomes the daemon
        exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pid_file" "$@"
    ) </dev/null >>"$log_file" 2>&1 9>&- &
    local _
    for _ in {1..50}; do
        [[ -s "$pid_file" ]] && return 0
        sleep 0.1
    done
    die "could not launch $1 (see $log_file)"
}

# terminate PID NAME GRACE_S: SIGTERM, wait, then SIGKILL.
terminate() {
    local pid="$1" name="$2" grace="$3" i
    pid_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    warn "$name (pid $pid) still running after ${grace}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    die "$name (pid $pid) survived SIGKILL"
}

show_log_tail() {
    [[ -f "$1" ]] || return 0
    printf -- '--- last 30 lines of %s\n' "$1" >&2
    tail -n 30 "$1" >&2
}

as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 126
    fi
}

take_lock() {
    command -v flock >/dev/null || return 0
    exec 9>"$RUN_DIR/lock"
    flock -w 900 9 || die "another services.sh holds $RUN_DIR/lock for >900s"
}

# ---------------------------------------------------------------- RabbitMQ

# An amqps:// URL names the TLS listener of the same node.
amqp_url_port() { if [[ "$AMQP_URL" == amqps://* ]]; then echo "$AMQPS_PORT"; else echo "$AMQP_PORT"; fi; }

rabbit_is_external() { ! is_local_default "$AMQP_URL" "$(amqp_url_port)"; }

rabbit_tls() { [[ "$RABBIT_TLS" == 1 || "$RABBIT_TLS" == true || "$RABBIT_TLS" == yes ]]; }

# openssl with its output in the log; dies with the log's tail on failure.
tls_openssl() {
    local tls_log="$LOG_DIR/tls.log"
    printf '\n=== %s: openssl %s\n' "$(date '+%F %T')" "$*" >>"$tls_log"
    if ! openssl "$@" >>"$tls_log" 2>&1; then
        show_log_tail "$tls_log"
        die "openssl $1 failed (log: $tls_log)"
    fi
}

# ca.pem, server.pem and server-key.pem in $TLS_DIR: kept if present, else generated
# (a private CA, then a server certificate it signs for the loopback names).
ensure_tls_certs() {
    local ca="$TLS_DIR/ca.pem" ca_key="$TLS_DIR/ca-key.pem"
    local cert="$TLS_DIR/server.pem" key="$TLS_DIR/server-key.pem"
    if [[ -s "$ca" && -s "$cert" && -s "$key" ]]; then
        return 0
    fi
    command -v openssl >/dev/null || die "openssl is needed to generate TLS certificates in $TLS_DIR (or put ca.pem, server.pem and server-key.pem there)"
    mkdir -p "$TLS_DIR"
    if [[ ! -s "$ca" ]]; then
        if [[ -e "$cert" || -e "$key" ]]; then
            die "$TLS_DIR has a server certificate or key but no ca.pem; add the CA that signed it"
        fi
        log "TLS: creating a private CA in $TLS_DIR"
        (umask 077 && tls_openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -days 3650 -subj "/CN=Fairway local CA" -keyout "$ca_key" -out "$ca" \
            -addext "keyUsage=critical,keyCertSign,cRLSign")
        chmod 644 "$ca"
    fi
    if [[ ! -s "$cert" || ! -s "$key" ]]; then
        [[ -s "$ca_key" ]] || die "$TLS_DIR lacks server.pem or server-key.pem, and has no ca-key.pem to issue them"
        log "TLS: issuing a server certificate for $TLS_NAMES"
        local ext="$TLS_DIR/server.ext" csr="$TLS_DIR/server.csr"
        printf '%s\n' "subjectAltName=$TLS_NAMES" "basicConstraints=CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
            "authorityKeyIdentifier=keyid" "subjectKeyIdentifier=hash" >"$ext"
        (umask 077 && tls_openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=localhost" -keyout "$key" -out "$csr")
        tls_openssl x509 -req -in "$csr" -CA "$ca" -CAkey "$ca_key" -CAcreateserial \
            -CAserial "$TLS_DIR/ca.srl" -days 825 -extfile "$ext" -out "$cert"
        rm -f "$csr" "$ext"
    fi
}

# Debian's /usr/sbin wrappers re-run the tools as user "rabbitmq" via su, which drops our
# environment and uses another cookie; the real scripts live in /usr/lib/rabbitmq/bin.
rabbit_sbin() {
    if [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
        echo /usr/lib/rabbitmq/bin
    elif command -v rabbitmq-server >/dev/null; then
        dirname "$(command -v rabbitmq-server)"
    else
        return 1
    fi
}

rabbitmqctl() (
    rabbit_env
    exec timeout 90 "$(rabbit_sbin)/rabbitmqctl" -n "$RABBIT_NODE" "$@"
)

install_rabbitmq() {
    rabbit_sbin >/dev/null && return 0
    log "rabbitmq-server is not installed; installing it with apt-get (one-time)"
    local apt_log="$LOG_DIR/apt-rabbitmq.log"
    if ! command -v apt-get >/dev/null; then
        die "rabbitmq-server (>= 3.10, with Erlang) is required; install it and re-run"
    fi
    as_root true 2>/dev/null || die "rabbitmq-server is not installed and we are not root (no passwordless sudo). Run: sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server"
    # Debian starts a packaged service on install unless policy-rc.d says no (exit 101).
    # A system broker on 5672 would lack our plugins and config, so forbid it for the
    # duration of the install, and stop it if it was started anyway.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e "$policy" ]]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy" && added_policy=1
    fi
    local rc=0
    { as_root timeout 900 apt-get update -q &&
        as_root env DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y -q rabbitmq-server; } >>"$apt_log" 2>&1 || rc=$?
    ((added_policy)) && as_root rm -f "$policy"
    if ((rc != 0)); then
        show_log_tail "$apt_log"
        die "apt-get install rabbitmq-server failed (log: $apt_log)"
    fi
    # Not `service rabbitmq-server status`: that runs rabbitmqctl as the rabbitmq user, which
    # starts epmd on every interface (our nodes start it on 127.0.0.1), and an epmd on
    # 0.0.0.0:4369 keeps the cluster tests' network namespaces from forwarding port 4369.
    if pgrep -u rabbitmq -x beam.smp >/dev/null 2>&1; then
        log "stopping the system rabbitmq-server that the package started"
        as_root service rabbitmq-server stop >>"$apt_log" 2>&1 || true
    fi
    # An epmd the package's scripts started (as rabbitmq, on every interface): none of ours.
    as_root pkill -u rabbitmq -x epmd >/dev/null 2>&1 || true
    rabbit_sbin >/dev/null || die "rabbitmq-server still not found after apt-get install"
}

rabbit_env() {
    export RABBITMQ_NODENAME="$RABBIT_NODE"
    export RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia"
    export RABBITMQ_LOG_BASE="$LOG_DIR"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/enabled_plugins"
    export RABBITMQ_CONFIG_FILE="$RABBIT_DIR/rabbitmq.conf"
    export RABBITMQ_PID_FILE="$RABBIT_PID_FILE"
    # Keep the system-wide /etc/rabbitmq files out of our node.
    export RABBITMQ_CONF_ENV_FILE="$RABBIT_DIR/rabbitmq-env.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$RABBIT_DIR/advanced.config"
    # The distribution port only follows the AMQP port when that is set via env, which we don't.
    export RABBITMQ_DIST_PORT=$((AMQP_PORT + 20000))
    export ERL_CRASH_DUMP="$RABBIT_DIR/erl_crash.dump"
    # Erlang distribution and epmd default to all interfaces; keep them local.
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface $RABBIT_DIST_INTERFACE${RABBIT_EXTRA_ERL_ARGS:+ $RABBIT_EXTRA_ERL_ARGS}"
    export ERL_EPMD_ADDRESS=127.0.0.1
}

write_rabbit_config() {
    mkdir -p "$RABBIT_DIR/mnesia"
    : >"$RABBITMQ_CONF_ENV_FILE"
    echo "[$RABBIT_PLUGINS]." >"$RABBITMQ_ENABLED_PLUGINS_FILE"
    write_rabbit_advanced_config
    cat >"$RABBITMQ_CONFIG_FILE" <<EOF
# Generated by scripts/services.sh; edits are overwritten on start.
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $MGMT_PORT
mqtt.listeners.tcp.default = 127.0.0.1:$MQTT_PORT
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = $PROM_PORT
# Twice the contract's 64 KiB (FAIRWAY_MAX_MESSAGE_BYTES): larger bodies are refused by the broker
# itself (the channel is closed), so a junk flood cannot cost more than this per message.
max_message_size = 131072
vm_memory_high_watermark.relative = 0.4
disk_free_limit.absolute = 1GB
log.console = false
log.file.level = info
# Internal users first (service accounts, guest on loopback), then devices through the
# web app, cached so a burst of connections costs one HTTP call per device a minute.
auth_backends.1 = internal
auth_backends.2 = cache
auth_cache.cached_backend = http
auth_cache.cache_ttl = 60000
auth_http.http_method = post
auth_http.user_path = $WEB_AUTH_URL/user
auth_http.vhost_path = $WEB_AUTH_URL/vhost
auth_http.resource_path = $WEB_AUTH_URL/resource
auth_http.topic_path = $WEB_AUTH_URL/topic
# MQTT devices publish topic <device>/<stream>: it lands in telemetry as <device>.<stream>.
mqtt.exchange = telemetry
mqtt.allow_anonymous = false
EOF
    [[ -z "$RABBIT_EXTRA_CONF" ]] || printf '%s\n' "$RABBIT_EXTRA_CONF" >>"$RABBITMQ_CONFIG_FILE"
    rabbit_tls || return 0
    cat >>"$RABBITMQ_CONFIG_FILE" <<TLS
# TLS (FAIRWAY_RABBITMQ_TLS): AMQPS and MQTTS with the certificate in $TLS_DIR. Clients are
# not asked for certificates: they log in with a user name and password, over TLS.
listeners.ssl.default = 127.0.0.1:$AMQPS_PORT
mqtt.listeners.ssl.default = 127.0.0.1:$MQTTS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server-key.pem
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
TLS
}

# RabbitMQ 3.10 takes the auth backend's TLS options from advanced.config only.
write_rabbit_advanced_config() {
    if [[ -z "$WEB_AUTH_CA" ]]; then
        [[ "$WEB_AUTH_URL" != https://* ]] || die "FAIRWAY_BROKER_AUTH_URL is https://; set FAIRWAY_BROKER_AUTH_CA_FILE to the CA of its certificate"
        echo "[]." >"$RABBITMQ_ADVANCED_CONFIG_FILE"
        return 0
    fi
    [[ "$WEB_AUTH_URL" == https://* ]] || die "FAIRWAY_BROKER_AUTH_CA_FILE is set but FAIRWAY_BROKER_AUTH_URL is not https://"
    [[ -r "$WEB_AUTH_CA" ]] || die "FAIRWAY_BROKER_AUTH_CA_FILE=$WEB_AUTH_CA is not a readable file"
    local host _port
    read -r host _port <<<"$(url_host_port "$WEB_AUTH_URL" 443)"
    cat >"$RABBITMQ_ADVANCED_CONFIG_FILE" <<ADVANCED
%% Generated by scripts/services.sh: HTTPS to the auth backend, verified (chain and host name).
[{rabbitmq_auth_backend_http, [{ssl_options, [
    {cacertfile, "$(cd "$(dirname "$WEB_AUTH_CA")" && pwd)/$(basename "$WEB_AUTH_CA")"},
    {verify, verify_peer},
    {server_name_indication, "$host"},
    {depth, 4}
]}]}].
ADVANCED
}

ensure_erlang_cookie() {
    local cookie="$HOME/.erlang.cookie"
    [[ -s "$cookie" ]] && return 0
    # Created up front so the server and the first rabbitmqctl call cannot race to create different ones.
    local letters=ABCDEFGHIJKLMNOPQRSTUVWXYZ byte value=""
    for byte in $(od -An -N20 -tu1 /dev/urandom); do
        value+="${letters:byte%26:1}"
    done
    (umask 077 && printf '%s' "$value" >"$cookie")
    chmod 400 "$cookie"
}

rabbit_pid() { read_pid "$RABBIT_PID_FILE"; }

# Our node is "up" as long as either the Erlang VM or its launcher script is alive.
rabbit_ours_alive() {
    pid_alive "$(rabbit_pid)" || pid_alive "$(read_pid "$RABBIT_LAUNCHER_PID_FILE")"
}

rabbit_boot_check() {
    rabbit_ours_alive || return "$GIVE_UP"
    rabbitmqctl -q await_startup --timeout 10 >/dev/null 2>&1 || return 1
    if ((${#RABBIT_EXEC_PREFIX[@]})); then
        # In a namespace: the forwarder on the port accepts whether the node listens or not.
        amqp_answers 127.0.0.1 "$AMQP_PORT" || return 1
    else
        tcp_open 127.0.0.1 "$AMQP_PORT" || return 1
    fi
    if rabbit_tls; then
        tcp_open 127.0.0.1 "$AMQPS_PORT" && tcp_open 127.0.0.1 "$MQTTS_PORT"
    fi
}

wait_rabbit_ready() {
    local rc=0
    wait_until "$RABBIT_TIMEOUT" rabbit_boot_check || rc=$?
    ((rc == 0)) && return 0
    show_log_tail "$LOG_DIR/rabbitmq-server.out"
    show_log_tail "$LOG_DIR/$RABBIT_NODE.log"
    if ((rc == GIVE_UP)); then
        die "RabbitMQ node $RABBIT_NODE exited during startup (logs above, in $LOG_DIR)"
    fi
    die "RabbitMQ node $RABBIT_NODE not ready after ${RABBIT_TIMEOUT}s (logs above; raise FAIRWAY_RABBITMQ_TIMEOUT if the machine is slow)"
}

start_rabbitmq() {
    if rabbit_is_external; then
        log "RabbitMQ: using external broker from FAIRWAY_AMQP_URL (not managed here)"
        local host port answers=amqp_answers
        read -r host port <<<"$(url_host_port "$AMQP_URL" "$(amqp_url_port)")"
        [[ "$AMQP_URL" == amqps://* ]] && answers=tcp_open # TLS first: no plain AMQP header
        wait_until 30 "$answers" "$host" "$port" || die "no AMQP broker answering at $host:$port (FAIRWAY_AMQP_URL)"
        return 0
    fi
    if rabbit_ours_alive; then
        wait_rabbit_ready
        log "RabbitMQ: node $RABBIT_NODE already running (pid $(rabbit_pid))"
        warn_stale_auth_url
        if rabbit_tls && ! tcp_open 127.0.0.1 "$AMQPS_PORT"; then
            warn "TLS is asked for but port $AMQPS_PORT is closed: the node started without it; run restart-rabbitmq"
        fi
        return 0
    fi
    if tcp_open 127.0.0.1 "$AMQP_PORT"; then
        amqp_answers 127.0.0.1 "$AMQP_PORT" ||
            die "port $AMQP_PORT is in use by something that does not speak AMQP; free it and retry"
        log "RabbitMQ: port $AMQP_PORT already answers AMQP from a broker not started by this script; using it"
        return 0
    fi
    install_rabbitmq
    rabbit_env
    if rabbit_tls; then
        ensure_tls_certs
    fi
    write_rabbit_config
    ensure_erlang_cookie
    log "RabbitMQ: starting node $RABBIT_NODE (first start takes ~10-20 s)"
    spawn "$RABBIT_LAUNCHER_PID_FILE" "$LOG_DIR/rabbitmq-server.out" "$(rabbit_sbin)/rabbitmq-server"
    wait_rabbit_ready
    log "RabbitMQ: ready (pid $(rabbit_pid))"
    if rabbit_tls; then
        log "RabbitMQ: TLS on amqps://127.0.0.1:$AMQPS_PORT and mqtts 127.0.0.1:$MQTTS_PORT; clients: FAIRWAY_AMQP_CA_FILE=$TLS_DIR/ca.pem"
    fi
}

# A running node keeps the auth URL it started with: say so when it is not the one asked for.
warn_stale_auth_url() {
    local conf="$RABBIT_DIR/rabbitmq.conf" running
    [[ -r "$conf" ]] || return 0
    running="$(sed -n 's/^auth_http\.user_path = //p' "$conf")"
    [[ -z "$running" || "$running" == "$WEB_AUTH_URL/user" ]] ||
        warn "the node asks $running for device logins, not $WEB_AUTH_URL/user: run restart-rabbitmq"
}

stop_rabbitmq() {
    if rabbit_is_external; then
        log "RabbitMQ: external broker (FAIRWAY_AMQP_URL) is not managed here; leaving it alone"
        return 0
    fi
    local pid launcher
    pid="$(rabbit_pid)"
    launcher="$(read_pid "$RABBIT_LAUNCHER_PID_FILE")"
    if ! rabbit_ours_alive; then
        if tcp_open 127.0.0.1 "$AMQP_PORT"; then
            log "RabbitMQ: port $AMQP_PORT is served by a broker not started by this script; leaving it alone" \
                "(if it is a leftover of ours: $(rabbit_sbin || echo /usr/lib/rabbitmq/bin)/rabbitmqctl -n $RABBIT_NODE shutdown)"
        else
            log "RabbitMQ: not running"
        fi
        rm -f "$RABBIT_PID_FILE" "$RABBIT_LAUNCHER_PID_FILE"
        return 0
    fi
    log "RabbitMQ: stopping node $RABBIT_NODE"
    rabbitmqctl shutdown >/dev/null 2>&1 || warn "rabbitmqctl shutdown failed; terminating the process"
    terminate "$pid" "RabbitMQ" 20
    terminate "$launcher" "RabbitMQ launcher" 5
    rm -f "$RABBIT_PID_FILE" "$RABBIT_LAUNCHER_PID_FILE"
    log "RabbitMQ: stopped"
}

status_rabbitmq() {
    local urls="$AMQP_URL  mgmt http://127.0.0.1:$MGMT_PORT/  mqtt 127.0.0.1:$MQTT_PORT"
    if rabbit_tls; then
        urls+="  amqps 127.0.0.1:$AMQPS_PORT  mqtts 127.0.0.1:$MQTTS_PORT"
    fi
    if rabbit_is_external; then
        local host port
        read -r host port <<<"$(url_host_port "$AMQP_URL" "$(amqp_url_port)")"
        if tcp_open "$host" "$port"; then
            echo "rabbitmq: running (external)  $AMQP_URL"
            return 0
        fi
        echo "rabbitmq: stopped (external, not answering)  $AMQP_URL"
        return 1
    fi
    if rabbit_ours_alive; then
        if tcp_open 127.0.0.1 "$AMQP_PORT"; then
            echo "rabbitmq: running  pid $(rabbit_pid)  node $RABBIT_NODE  $urls"
            return 0
        fi
        echo "rabbitmq: starting (pid $(rabbit_pid), AMQP port not open yet)  node $RABBIT_NODE"
        return 1
    fi
    if amqp_answers 127.0.0.1 "$AMQP_PORT"; then
        echo "rabbitmq: running (not started by this script)  $AMQP_URL"
        return 0
    fi
    echo "rabbitmq: stopped"
    return 1
}

# ---------------------------------------------------------------- PostgreSQL (FerretDB's backend)

# The directory of initdb/pg_ctl/psql: Debian's newest /usr/lib/postgresql/<v>/bin, else PATH.
pg_bin() {
    local dir
    dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)"
    if [[ -n "$dir" && -x "$dir/pg_ctl" ]]; then
        echo "$dir"
    elif command -v pg_ctl >/dev/null; then
        dirname "$(command -v pg_ctl)"
    else
        return 1
    fi
}

install_postgresql() {
    pg_bin >/dev/null && return 0
    log "postgresql is not installed; installing it with apt-get (one-time)"
    local apt_log="$LOG_DIR/apt-postgresql.log"
    command -v apt-get >/dev/null || die "PostgreSQL (>= 13) is required for FerretDB; install it and re-run (or set FAIRWAY_FERRETDB_BACKEND=sqlite)"
    as_root true 2>/dev/null || die "postgresql is not installed and we are not root (no passwordless sudo). Run: sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql"
    # As for RabbitMQ: keep the package from starting its system cluster on 5432.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e "$policy" ]]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy" && added_policy=1
    fi
    local rc=0
    {
        apt-cache show postgresql >/dev/null 2>&1 || as_root timeout 900 apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y -q postgresql ||
            { as_root timeout 900 apt-get update -q &&
                as_root env DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y -q postgresql; }
    } >>"$apt_log" 2>&1 || rc=$?
    ((added_policy)) && as_root rm -f "$policy"
    if ((rc != 0)); then
        show_log_tail "$apt_log"
        die "apt-get install postgresql failed (log: $apt_log)"
    fi
    pg_bin >/dev/null || die "pg_ctl still not found after apt-get install postgresql"
}

# PostgreSQL refuses to run as root: as root, run its tools as the package's "postgres" user.
as_postgres() {
    if [[ "$(id -u)" == 0 ]]; then
        getent passwd postgres >/dev/null || die "running as root but there is no 'postgres' user to run PostgreSQL as"
        if command -v runuser >/dev/null; then
            runuser -u postgres -- "$@"
        else
            su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

psql_admin() {
    "$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tA "$@"
}

pg_pid() {
    [[ -s "$PG_DATA/postmaster.pid" ]] || return 0
    head -n 1 "$PG_DATA/postmaster.pid" | tr -dc '0-9'
}

pg_ours_alive() { pid_alive "$(pg_pid)"; }

pg_ready() { psql_admin -c 'SELECT 1' >/dev/null 2>&1; }

pg_boot_check() {
    pg_ours_alive || return "$GIVE_UP"
    pg_ready
}

# The database FerretDB stores into, planned so that its GIN expression indexes are used.
pg_prepare_database() {
    if [[ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]]; then
        psql_admin -c "CREATE DATABASE $PG_DB" >/dev/null || die "could not create database $PG_DB"
    fi
    # FerretDB sends prepared statements (`_jsonb->$1 @> $2`); a generic plan cannot match an
    # expression index, so every statement is planned with its values. Set before FerretDB
    # connects: sessions read it when they start.
    psql_admin -c "ALTER DATABASE $PG_DB SET plan_cache_mode = force_custom_plan" >/dev/null ||
        die "could not set plan_cache_mode on $PG_DB"
}

start_postgres() {
    if pg_ours_alive; then
        wait_until "$PG_TIMEOUT" pg_boot_check || die "PostgreSQL (pid $(pg_pid)) not answering on 127.0.0.1:$PG_PORT (log: $PG_LOG)"
        pg_prepare_database
        log "PostgreSQL: already running (pid $(pg_pid)) on 127.0.0.1:$PG_PORT"
        return 0
    fi
    tcp_open 127.0.0.1 "$PG_PORT" &&
        die "port $PG_PORT is in use by a process not started by this script; free it or set FAIRWAY_POSTGRES_PORT"
    install_postgresql
    local bin
    bin="$(pg_bin)"
    mkdir -p "$PG_DIR"
    [[ "$(id -u)" == 0 ]] && chown -R postgres:postgres "$PG_DIR"
    as_postgres test -w "$PG_DIR" ||
        die "the postgres user cannot write $PG_DIR (every parent directory must be searchable by it)"
    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
        log "PostgreSQL: creating a cluster in $PG_DATA (one-time)"
        as_postgres "$bin/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
            >>"$LOG_DIR/postgres-initdb.log" 2>&1 || {
            show_log_tail "$LOG_DIR/postgres-initdb.log"
            die "initdb failed (log: $LOG_DIR/postgres-initdb.log)"
        }
    fi
    log "PostgreSQL: starting $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
    # TCP on loopback only, no Unix socket (its path would depend on how deep .services is).
    as_postgres "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$PG_TIMEOUT" \
        -o "-p $PG_PORT -k '' -c listen_addresses=127.0.0.1" start </dev/null >/dev/null 9>&- || {
        show_log_tail "$PG_LOG"
        die "PostgreSQL failed to start (log: $PG_LOG)"
    }
    wait_until "$PG_TIMEOUT" pg_boot_check || {
        show_log_tail "$PG_LOG"
        die "PostgreSQL not answering on 127.0.0.1:$PG_PORT after ${PG_TIMEOUT}s (log: $PG_LOG)"
    }
    pg_prepare_database
    log "PostgreSQL: ready (pid $(pg_pid)), database $PG_DB"
}

stop_postgres() {
    if ! pg_ours_alive; then
        [[ -d "$PG_DATA" ]] && log "PostgreSQL: not running"
        return 0
    fi
    log "PostgreSQL: stopping (pid $(pg_pid))"
    as_postgres "$(pg_bin)/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null ||
        terminate "$(pg_pid)" PostgreSQL 10
    log "PostgreSQL: stopped"
}

status_postgres() {
    if pg_ours_alive && pg_ready; then
        echo "postgres: running  pid $(pg_pid)  $PG_URL"
        return 0
    fi
    if pg_ours_alive; then
        echo "postgres: starting (pid $(pg_pid), not answering yet)  $PG_URL"
    else
        echo "postgres: stopped"
    fi
    return 1
}

# ---------------------------------------------------------------- MongoDB-compatible DB

# external: FAIRWAY_MONGO_URL points elsewhere; mongod: a real MongoDB is installed; else FerretDB.
mongo_mode() {
    if ! is_local_default "$MONGO_URL" "$MONGO_PORT"; then
        echo external
    elif command -v mongod >/dev/null; then
        echo mongod
    else
        echo ferretdb
    fi
}

PYMONGO_PYTHON=""
find_pymongo_python() {
    local py
    for py in "$ROOT/.venv/bin/python" python3; do
        if command -v "$py" >/dev/null && "$py" -c 'import pymongo' 2>/dev/null; then
            PYMONGO_PYTHON="$py"
            return 0
        fi
    done
    PYMONGO_PYTHON=none
}

# A real "ping" round-trip when pymongo is importable, otherwise just a TCP connect.
mongo_ping() {
    local host port
    read -r host port <<<"$(url_host_port "$MONGO_URL" "$MONGO_PORT")"
    [[ -n "$PYMONGO_PYTHON" ]] || find_pymongo_python
    if [[ "$PYMONGO_PYTHON" == none ]]; then
        tcp_open "$host" "$port"
        return
    fi
    [[ "$MONGO_URL" == mongodb+srv://* ]] || tcp_open "$host" "$port" || return 1
    timeout 10 "$PYMONGO_PYTHON" - "$MONGO_URL" >/dev/null 2>&1 <<'EOF'
import sys, pymongo
client = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=2000, connectTimeoutMS=2000)
client.admin.command("ping")
EOF
}

mongo_pid() { read_pid "$MONGO_PID_FILE"; }

mongo_boot_check() {
    pid_alive "$(mongo_pid)" || return "$GIVE_UP"
    mongo_ping || return 1
}

go_version_ok() {
    local v="${1#go}" major minor
    major="${v%%.*}"
    minor="${v#*.}"
    minor="${minor%%[!0-9]*}"
    [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] || return 1
    ((major > 1 || (major == 1 && minor >= 24)))
}

# Go >= 1.24 is needed for `go get -tool`; CI may not have /usr/local/go/bin on PATH.
find_go() {
    local go version
    for go in "$(command -v go || true)" /usr/local/go/bin/go "$HOME/sdk/go/bin/go" /usr/lib/go-*/bin/go; do
        [[ -n "$go" && -x "$go" ]] || continue
        version="$("$go" env GOVERSION 2>/dev/null)" || continue
        if go_version_ok "$version"; then
            echo "$go"
            return 0
        fi
    done
    return 1
}

ferretdb_build_steps() {
    local go="$1" work="$2" src
    export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0
    mkdir -p "$work/tool" || return
    cd "$work/tool" || return
    [[ -f go.mod ]] || timeout 120 "$go" mod init fairway-ferretdb-build || return
    # `go install ...@v1.24.2` fails here (the proxy answers 403 for the module's version list);
    # pinning it as a tool dependency fetches the exact version without that lookup.
    timeout 900 "$go" get -tool "$FERRETDB_MODULE/cmd/ferretdb@$FERRETDB_VERSION" || return
    src="$(timeout 120 "$go" list -m -f '{{.Dir}}' "$FERRETDB_MODULE")" || return
    # A binary whose main module is FerretDB panics at startup unless build/version/version.txt
    # holds the version, and the module zip lacks that generated file: build from a patched copy.
    rm -rf "$work/src" && cp -r "$src" "$work/src" && chmod -R u+w "$work/src" || return
    echo "$FERRETDB_VERSION" >"$work/src/build/version/version.txt" || return
    cd "$work/src" || return
    timeout 1800 "$go" build -trimpath -o "$FERRETDB_BIN.tmp" ./cmd/ferretdb
}

build_ferretdb() {
    [[ -x "$FERRETDB_BIN" ]] && return 0
    local go build_log="$LOG_DIR/ferretdb-build.log"
    go="$(find_go)" || die "FerretDB $FERRETDB_VERSION must be built from source and needs Go >= 1.24 (none found on PATH or in /usr/local/go). Install Go >= 1.24 from https://go.dev/dl/ into /usr/local/go (or install MongoDB so that mongod is on PATH, or set FAIRWAY_MONGO_URL), then re-run."
    log "FerretDB: building $FERRETDB_VERSION with $("$go" env GOVERSION) (one-time, ~1-3 min; log: $build_log)"
    if ! (ferretdb_build_steps "$go" "$SERVICES_DIR/build/ferretdb") >>"$build_log" 2>&1; then
        show_log_tail "$build_log"
        die "FerretDB build failed (full log: $build_log)"
    fi
    mv -f "$FERRETDB_BIN.tmp" "$FERRETDB_BIN"
    log "FerretDB: built $FERRETDB_BIN ($("$FERRETDB_BIN" --version | head -n 1))"
}

# The backend the running FerretDB was started with (one started before backends existed: sqlite).
running_backend() {
    local backend=sqlite
    [[ -s "$FERRETDB_BACKEND_FILE" ]] && backend="$(<"$FERRETDB_BACKEND_FILE")"
    echo "$backend"
}

launch_ferretdb() {
    build_ferretdb
    local data="$SERVICES_DIR/ferretdb/data" state="$SERVICES_DIR/ferretdb/state" backend_args
    mkdir -p "$data" "$state"
    if [[ "$FERRETDB_BACKEND" == postgresql ]]; then
        backend_args=(--handler=postgresql --postgresql-url="$PG_URL")
    else
        backend_args=(--handler=sqlite --sqlite-url="file:$data/")
    fi
    log "MongoDB: starting FerretDB $FERRETDB_VERSION ($FERRETDB_BACKEND backend) on 127.0.0.1:$MONGO_PORT"
    echo "$FERRETDB_BACKEND" >"$FERRETDB_BACKEND_FILE"
    spawn "$MONGO_PID_FILE" "$LOG_DIR/ferretdb.log" \
        env GOGC="$FERRETDB_GOGC" GOMEMLIMIT="$FERRETDB_GOMEMLIMIT" "$FERRETDB_BIN" \
        "${backend_args[@]}" --state-dir="$state" \
        --listen-addr="127.0.0.1:$MONGO_PORT" --debug-addr=- --telemetry=disable \
        --test-batch-size="$FERRETDB_INSERT_BATCH"
}

launch_mongod() {
    local data="$SERVICES_DIR/mongod/data"
    mkdir -p "$data"
    log "MongoDB: starting mongod on 127.0.0.1:$MONGO_PORT"
    rm -f "$MONGO_PID_FILE"
    timeout 120 mongod --dbpath "$data" --bind_ip 127.0.0.1 --port "$MONGO_PORT" --fork \
        --logpath "$LOG_DIR/mongod.log" --logappend --pidfilepath "$MONGO_PID_FILE" \
        </dev/null >/dev/null 9>&- || {
        show_log_tail "$LOG_DIR/mongod.log"
        die "mongod failed to start (log: $LOG_DIR/mongod.log)"
    }
}

mongo_log() {
    if [[ "$(mongo_mode)" == mongod ]]; then echo "$LOG_DIR/mongod.log"; else echo "$LOG_DIR/ferretdb.log"; fi
}

start_mongo() {
    local mode
    mode="$(mongo_mode)"
    if [[ "$mode" == external ]]; then
        log "MongoDB: using external database from FAIRWAY_MONGO_URL (not managed here)"
        wait_until "$MONGO_TIMEOUT" mongo_ping || die "database at FAIRWAY_MONGO_URL=$MONGO_URL is not reachable"
        return 0
    fi
    local state=ready
    if [[ "$mode" == ferretdb ]] && pid_alive "$(mongo_pid)" && [[ "$(running_backend)" != "$FERRETDB_BACKEND" ]]; then
        log "MongoDB: FerretDB runs on $(running_backend) but FAIRWAY_FERRETDB_BACKEND=$FERRETDB_BACKEND; restarting it"
        stop_mongo
    fi
    if [[ "$mode" == ferretdb && "$FERRETDB_BACKEND" == postgresql ]]; then
        start_postgres # also when FerretDB runs: PostgreSQL may have been stopped under it
    fi
    if pid_alive "$(mongo_pid)"; then
        state="already running"
    elif tcp_open 127.0.0.1 "$MONGO_PORT"; then
        log "MongoDB: port $MONGO_PORT is already served by a process not started by this script; using it"
        wait_until "$MONGO_TIMEOUT" mongo_ping || die "port $MONGO_PORT is open but does not answer a MongoDB ping"
        return 0
    else
        "launch_$mode"
    fi
    local rc=0
    wait_until "$MONGO_TIMEOUT" mongo_boot_check || rc=$?
    if ((rc != 0)); then
        show_log_tail "$(mongo_log)"
        ((rc == GIVE_UP)) && die "$mode exited during startup (log: $(mongo_log))"
        die "$mode not answering on 127.0.0.1:$MONGO_PORT after ${MONGO_TIMEOUT}s (log: $(mongo_log))"
    fi
    local backend=""
    [[ "$mode" == ferretdb ]] && backend=" on $(running_backend)"
    log "MongoDB: $mode$backend $state at $MONGO_URL (pid $(mongo_pid))"
}

stop_mongo() {
    local mode pid
    mode="$(mongo_mode)"
    if [[ "$mode" == external ]]; then
        log "MongoDB: external database (FAIRWAY_MONGO_URL) is not managed here; leaving it alone"
        return 0
    fi
    pid="$(mongo_pid)"
    if ! pid_alive "$pid"; then
        if tcp_open 127.0.0.1 "$MONGO_PORT"; then
            log "MongoDB: port $MONGO_PORT is served by a process not started by this script; leaving it alone"
        else
            log "MongoDB: not running"
        fi
        rm -f "$MONGO_PID_FILE"
        return 0
    fi
    log "MongoDB: stopping $mode (pid $pid)"
    # Open client connections can delay a graceful exit; tests rely on this being quick.
    terminate "$pid" "$mode" 10
    rm -f "$MONGO_PID_FILE"
    local _
    for _ in {1..50}; do
        tcp_open 127.0.0.1 "$MONGO_PORT" || break
        sleep 0.1
    done
    log "MongoDB: stopped"
}

status_mongo() {
    local mode pid
    mode="$(mongo_mode)"
    pid="$(mongo_pid)"
    if [[ "$mode" == external ]]; then
        if mongo_ping; then
            echo "mongo: running (external)  $MONGO_URL"
            return 0
        fi
        echo "mongo: stopped (external, not answering)  $MONGO_URL"
        return 1
    fi
    local what="$mode"
    [[ "$mode" == ferretdb ]] && what="ferretdb ($(running_backend) backend)"
    if pid_alive "$pid"; then
        if mongo_ping; then
            echo "mongo: running  pid $pid  $what  $MONGO_URL"
            return 0
        fi
        echo "mongo: starting (pid $pid, not answering yet)  $what  $MONGO_URL"
        return 1
    fi
    if mongo_ping; then
        echo "mongo: running (not started by this script)  $MONGO_URL"
        return 0
    fi
    echo "mongo: stopped"
    return 1
}

# ---------------------------------------------------------------- RabbitMQ cluster (three local nodes)
#
# `cluster up|down|status|env|kill N|stop N|start N`: three clustered nodes on this machine for
# tests and benchmarks of failover. They run the single node's configuration (write_rabbit_config:
# listeners, plugins, limits, the HTTP auth backend) plus classic-config peer discovery (as the
# Ansible role), pause_minority and balanced quorum-queue leader placement, each with its own
# node name, ports and directory under $SERVICES_DIR/cluster, and one Erlang cookie of their own
# ($SERVICES_DIR/cluster/home/.erlang.cookie): the shared single node is never touched.
# Node N (1..3) of FAIRWAY_CLUSTER_NODE_PREFIX [fairway-c] is <prefix>N@localhost, with ports from
# FAIRWAY_CLUSTER_PORT_BASE [5680]: AMQP base+N, MQTT base+100+N, management base+10000+N,
# Prometheus base+10100+N, Erlang distribution AMQP+20000 (epmd on 4369 is shared, as it must be).
# TLS is not offered on the cluster. FAIRWAY_CLUSTER_NET_TICKTIME [Erlang's 60 s]: the nodes'
# net_ticktime, how long a silent peer takes to count as down (a partition's detection time).
#
# Partitions (`cluster cut N` / `cluster heal N`): with FAIRWAY_CLUSTER_NETNS_NODE=N (root, and
# iproute2 and socat, installed here if missing), node N runs in a network namespace of its own,
# fw<base>n<N>, joined to this one by two veth links: a "cluster" link that carries its Erlang
# distribution and epmd traffic, and a "client" link for AMQP, MQTT, management, Prometheus and
# its calls to the web app's auth endpoints. socat forwarders on both ends of each link keep the
# node's names and ports what they would be on 127.0.0.1 (clients still reach it on loopback, so
# guest may log in). `cut` takes the cluster link down: node N and the others stop hearing from
# each other, silently, while clients still reach every node - a real partition of one node, which
# pause_minority resolves by pausing node N. `heal` brings the link back. The links are /30s from
# 10.213.0.0/16 (cluster) and 10.214.0.0/16 (client), chosen by the port base.

CLUSTER_SIZE=3
CLUSTER_DIR="$SERVICES_DIR/cluster"
CLUSTER_PREFIX="${FAIRWAY_CLUSTER_NODE_PREFIX:-fairway-c}"
CLUSTER_PORT_BASE="${FAIRWAY_CLUSTER_PORT_BASE:-5680}"
CLUSTER_NETNS_NODE="${FAIRWAY_CLUSTER_NETNS_NODE:-}"
CLUSTER_NET_TICKTIME="${FAIRWAY_CLUSTER_NET_TICKTIME:-}"

cluster_node_name() { echo "$CLUSTER_PREFIX$1@localhost"; }

# cluster_select N: point the single node's helpers (rabbit_env, write_rabbit_config,
# rabbitmqctl, rabbit_ours_alive, wait_rabbit_ready ...) at cluster node N.
cluster_select() {
    local n="$1" i peers=""
    RABBIT_NODE="$(cluster_node_name "$n")"
    RABBIT_DIR="$CLUSTER_DIR/n$n"
    LOG_DIR="$RABBIT_DIR/logs"
    RABBIT_PID_FILE="$RUN_DIR/cluster-n$n.pid"
    RABBIT_LAUNCHER_PID_FILE="$RUN_DIR/cluster-n$n-launcher.pid"
    AMQP_PORT=$((CLUSTER_PORT_BASE + n))
    MQTT_PORT=$((CLUSTER_PORT_BASE + 100 + n))
    MGMT_PORT=$((CLUSTER_PORT_BASE + 10000 + n))
    PROM_PORT=$((CLUSTER_PORT_BASE + 10100 + n))
    RABBIT_TLS=0
    for ((i = 1; i <= CLUSTER_SIZE; i++)); do
        peers+="cluster_formation.classic_config.nodes.$i = $(cluster_node_name "$i")"$'\n'
    done
    # A node's first boot joins whichever listed node runs (the Ansible role does the same);
    # later boots rejoin from their own data. Leaders of new quorum queues go to the node
    # with the fewest, not to the declaring client's node.
    RABBIT_EXTRA_CONF="# Cluster node $n of $CLUSTER_SIZE (scripts/services.sh cluster).
cluster_formation.peer_discovery_backend = classic_config
${peers}cluster_partition_handling = pause_minority
queue_leader_locator = balanced"
    [[ -z "$CLUSTER_NET_TICKTIME" ]] || RABBIT_EXTRA_CONF+=$'\n'"net_ticktime = $CLUSTER_NET_TICKTIME"
    RABBIT_EXTRA_ERL_ARGS=""
    RABBIT_DIST_INTERFACE="{127,0,0,1}"
    RABBIT_EXEC_PREFIX=()
    if [[ "$n" == "$CLUSTER_NETNS_NODE" ]]; then
        # epmd is the host's, through the cluster link's forwarder: none of its own in there.
        # Distribution listens on the cluster link itself (the node's start-up check wants
        # its port free on every address of the namespace: no forwarder may hold it there).
        RABBIT_EXTRA_ERL_ARGS="-start_epmd false"
        RABBIT_DIST_INTERFACE="{$(netns_addr cluster ns | tr . ,)}"
        RABBIT_EXEC_PREFIX=(ip netns exec "$(netns_name)")
    fi
    mkdir -p "$LOG_DIR"
}

cluster_check_port_base() {
    [[ "$CLUSTER_PORT_BASE" =~ ^[0-9]+$ ]] || die "FAIRWAY_CLUSTER_PORT_BASE must be a number"
    ((CLUSTER_PORT_BASE >= 1024 && CLUSTER_PORT_BASE + 20000 + CLUSTER_SIZE <= 65535)) ||
        die "FAIRWAY_CLUSTER_PORT_BASE=$CLUSTER_PORT_BASE leaves no room for the cluster's ports"
    [[ "$CLUSTER_PREFIX" =~ ^[A-Za-z0-9_-]+$ ]] ||
        die "FAIRWAY_CLUSTER_NODE_PREFIX must be letters, digits, - or _"
    [[ -z "$CLUSTER_NETNS_NODE" || "$CLUSTER_NETNS_NODE" =~ ^[1-9]$ && "$CLUSTER_NETNS_NODE" -le "$CLUSTER_SIZE" ]] ||
        die "FAIRWAY_CLUSTER_NETNS_NODE must be a node number, 1..$CLUSTER_SIZE"
    [[ -z "$CLUSTER_NET_TICKTIME" || "$CLUSTER_NET_TICKTIME" =~ ^[0-9]+$ && "$CLUSTER_NET_TICKTIME" -ge 1 ]] ||
        die "FAIRWAY_CLUSTER_NET_TICKTIME must be a whole number of seconds"
    local n
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        [[ "$(cluster_node_name "$n")" != "$RABBIT_NODE" ]] ||
            die "cluster node $n would be named like the single node ($RABBIT_NODE)"
    done
}

# The cluster's own Erlang cookie: HOME points at it for the nodes and rabbitmqctl.
cluster_home() {
    HOME="$CLUSTER_DIR/home"
    mkdir -p "$HOME"
    export HOME
    ensure_erlang_cookie
}

cluster_node_arg() {
    local arg="${1:-}" n
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        if [[ "$arg" == "$n" || "$arg" == "$(cluster_node_name "$n")" ]]; then
            echo "$n"
            return 0
        fi
    done
    die "cluster: NODE must be 1..$CLUSTER_SIZE or a node name like $(cluster_node_name 1), not '$arg'"
}

cluster_known() { [[ -d "$RABBIT_DIR/mnesia/$RABBIT_NODE" ]]; }

cluster_spawn() {
    local n="$1"
    cluster_select "$n"
    if [[ "$n" == "$CLUSTER_NETNS_NODE" ]]; then
        netns_up # its own port check
        cluster_select "$n"
    else
        tcp_open 127.0.0.1 "$AMQP_PORT" &&
            die "cluster node $n: port $AMQP_PORT is in use by a process not started by this script; set FAIRWAY_CLUSTER_PORT_BASE"
    fi
    install_rabbitmq
    rabbit_env
    write_rabbit_config
    log "RabbitMQ cluster: starting node $RABBIT_NODE (AMQP 127.0.0.1:$AMQP_PORT${RABBIT_EXEC_PREFIX[*]:+, in network namespace $(netns_name)})"
    spawn "$RABBIT_LAUNCHER_PID_FILE" "$LOG_DIR/rabbitmq-server.out" "${RABBIT_EXEC_PREFIX[@]}" "$(rabbit_sbin)/rabbitmq-server"
}

cluster_wait() {
    cluster_select "$1"
    wait_rabbit_ready
    log "RabbitMQ cluster: node $RABBIT_NODE ready (pid $(rabbit_pid))"
}

# The node names node N sees running in its cluster, one per line.
cluster_running_nodes() {
    cluster_select "$1"
    rabbitmqctl -q cluster_status --formatter json 2>/dev/null |
        python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin).get("running_nodes", [])))'
}

# A node that formed a cluster of its own (its first boot found no peer) joins node 1's.
cluster_join_if_alone() {
    local n="$1" first
    first="$(cluster_node_name 1)"
    ((n == 1)) && return 0
    cluster_running_nodes "$n" | grep -qx "$first" && return 0
    cluster_select "$n"
    warn "node $RABBIT_NODE is not in $first's cluster; joining it"
    if ! { rabbitmqctl -q stop_app && rabbitmqctl -q reset &&
        rabbitmqctl -q join_cluster "$first" && rabbitmqctl -q start_app; } >/dev/null; then
        die "node $RABBIT_NODE could not join $first (logs in $LOG_DIR)"
    fi
}

cluster_up() {
    local n started=()
    # A whole cluster: a cut link is healed.
    [[ -z "$CLUSTER_NETNS_NODE" ]] || ! netns_exists || netns_link cluster up
    # Nodes that ran before restart all at once: a node waits for the peer that stopped
    # last before it serves. New nodes start one at a time, each joining those running.
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        cluster_select "$n"
        if ! rabbit_ours_alive && cluster_known; then
            cluster_spawn "$n"
            started+=("$n")
        fi
    done
    for n in "${started[@]}"; do cluster_wait "$n"; done
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        cluster_select "$n"
        if rabbit_ours_alive; then
            wait_rabbit_ready
        else
            cluster_spawn "$n"
            cluster_wait "$n"
        fi
        cluster_join_if_alone "$n"
    done
    local running
    running="$(cluster_running_nodes 1 | wc -l)"
    ((running == CLUSTER_SIZE)) || die "the cluster runs $running of $CLUSTER_SIZE nodes"
    log "RabbitMQ cluster: $CLUSTER_SIZE nodes running and clustered"
    cluster_env | sed 's/^/services:   /'
}

cluster_stop_node() {
    cluster_select "$1"
    if ! rabbit_ours_alive; then
        log "RabbitMQ cluster: node $RABBIT_NODE not running"
        return 0
    fi
    local pid launcher
    pid="$(rabbit_pid)"
    launcher="$(read_pid "$RABBIT_LAUNCHER_PID_FILE")"
    log "RabbitMQ cluster: stopping node $RABBIT_NODE"
    rabbitmqctl shutdown >/dev/null 2>&1 || warn "rabbitmqctl shutdown failed; terminating the process"
    terminate "$pid" "RabbitMQ $RABBIT_NODE" 20
    terminate "$launcher" "RabbitMQ launcher" 5
    rm -f "$RABBIT_PID_FILE" "$RABBIT_LAUNCHER_PID_FILE"
}

# SIGKILL of the node's Erlang VM: a crash, no goodbye to its peers or clients.
cluster_kill_node() {
    cluster_select "$1"
    local pid launcher
    pid="$(rabbit_pid)"
    launcher="$(read_pid "$RABBIT_LAUNCHER_PID_FILE")"
    if ! pid_alive "$pid"; then
        log "RabbitMQ cluster: node $RABBIT_NODE not running"
    else
        kill -KILL "$pid" 2>/dev/null || true
        # Next to instant; a VM in uninterruptible I/O, or starved of CPU, takes longer.
        local deadline=$((SECONDS + 60)) states=""
        while pid_alive "$pid" && ((SECONDS < deadline)); do
            states+="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
            sleep 0.05
        done
        pid_alive "$pid" && die "node $RABBIT_NODE (pid $pid) survived SIGKILL for 60 s (states seen: $(tail -c 40 <<<"$states"))"
        log "RabbitMQ cluster: killed node $RABBIT_NODE (pid $pid, SIGKILL)"
    fi
    terminate "$launcher" "RabbitMQ launcher" 5
    rm -f "$RABBIT_PID_FILE" "$RABBIT_LAUNCHER_PID_FILE"
}

cluster_start_node() {
    cluster_select "$1"
    if rabbit_ours_alive; then
        wait_rabbit_ready
        log "RabbitMQ cluster: node $RABBIT_NODE already running (pid $(rabbit_pid))"
        return 0
    fi
    cluster_spawn "$1"
    cluster_wait "$1"
    cluster_join_if_alone "$1"
}

cluster_status() {
    local n rc=0 peers
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        cluster_select "$n"
        if rabbit_ours_alive && tcp_open 127.0.0.1 "$AMQP_PORT"; then
            peers="$(cluster_running_nodes "$n" | wc -l)"
            echo "cluster node $n: running  pid $(rabbit_pid)  $RABBIT_NODE  amqp 127.0.0.1:$AMQP_PORT  mgmt http://127.0.0.1:$MGMT_PORT/  mqtt 127.0.0.1:$MQTT_PORT  sees $peers running"
        elif rabbit_ours_alive; then
            echo "cluster node $n: starting (pid $(rabbit_pid))  $RABBIT_NODE"
            rc=3
        else
            echo "cluster node $n: stopped  $RABBIT_NODE"
            rc=3
        fi
    done
    if [[ -n "$CLUSTER_NETNS_NODE" ]]; then
        if netns_exists; then
            echo "cluster node $CLUSTER_NETNS_NODE: in network namespace $(netns_name), cluster link $(netns_link_state cluster)"
        else
            echo "cluster node $CLUSTER_NETNS_NODE: network namespace $(netns_name) not set up"
        fi
    fi
    return "$rc"
}

# Settings for Fairway's processes on the cluster, as shell exports.
cluster_env() {
    local n urls=() mgmt=()
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        urls+=("amqp://guest:guest@127.0.0.1:$((CLUSTER_PORT_BASE + n))/%2F")
        mgmt+=("http://guest:guest@127.0.0.1:$((CLUSTER_PORT_BASE + 10000 + n))")
    done
    local IFS=,
    echo "export FAIRWAY_AMQP_URL='${urls[*]}'"
    echo "export FAIRWAY_RABBITMQ_MGMT_URL='${mgmt[*]}'"
    echo "export FAIRWAY_QUEUE_TYPE=quorum"
}

# ---------------------------------------------------------------- a cluster node in a network namespace
# (FAIRWAY_CLUSTER_NETNS_NODE; see the cluster section's header.)

netns_name() { echo "fw${CLUSTER_PORT_BASE}n$CLUSTER_NETNS_NODE"; }

netns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$(netns_name)"; }

# netns_addr cluster|client host|ns: that end's address on the link (a /30 per port base).
netns_addr() {
    local net=10.213 k=$((CLUSTER_PORT_BASE % 16384 * 4)) end=1
    [[ "$1" == client ]] && net=10.214
    [[ "$2" == ns ]] && end=2
    echo "$net.$((k / 256)).$((k % 256 + end))"
}

# The host's end of a link: <namespace>d (distribution) or <namespace>c (clients); inside the
# namespace the ends are named cluster and client.
netns_if() { if [[ "$1" == cluster ]]; then echo "$(netns_name)d"; else echo "$(netns_name)c"; fi; }

netns_link() { ip link set "$(netns_if "$1")" "$2"; }

netns_link_state() {
    if ip -o link show "$(netns_if "$1")" 2>/dev/null | grep -q '[<,]UP[,>]'; then echo up; else echo cut; fi
}

ensure_netns_tools() {
    command -v ip >/dev/null && command -v socat >/dev/null && command -v ss >/dev/null && return 0
    as_root true 2>/dev/null || die "FAIRWAY_CLUSTER_NETNS_NODE needs iproute2 and socat and root to install them"
    command -v apt-get >/dev/null || die "FAIRWAY_CLUSTER_NETNS_NODE needs iproute2 and socat; install them and re-run"
    log "installing iproute2 and socat with apt-get (one-time)"
    local apt_log="$LOG_DIR/apt-netns.log"
    { as_root timeout 900 apt-get update -q &&
        as_root env DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y -q --no-install-recommends iproute2 socat; } >>"$apt_log" 2>&1 ||
        { show_log_tail "$apt_log"; die "apt-get install iproute2 socat failed (log: $apt_log)"; }
}

# True when something listens on 127.0.0.1/ADDRESS:PORT (in the namespace with "ns" first).
netns_listening() {
    local where=() addr port
    [[ "$1" == ns ]] && { where=(ip netns exec "$(netns_name)"); shift; }
    addr="$1" port="$2"
    [[ -n "$("${where[@]}" ss -Hltn "src $addr:$port" 2>/dev/null)" ]]
}

# netns_forward host|ns ADDRESS PORT TARGET: a socat relay from ADDRESS:PORT to TARGET:PORT, on
# that side of the links; forked connections share its process group, ended with it.
netns_forward() {
    local side="$1" addr="$2" port="$3" target="$4" where=()
    local pid_file="$RUN_DIR/cluster-fwd-$side-$addr-$port.pid"
    [[ "$side" == ns ]] && where=(ip netns exec "$(netns_name)")
    pid_alive "$(read_pid "$pid_file")" && return 0
    if [[ "$side" == host ]]; then
        ! netns_listening "$addr" "$port" ||
            die "port $addr:$port is in use by a process not started by this script; set FAIRWAY_CLUSTER_PORT_BASE"
    fi
    spawn "$pid_file" "$CLUSTER_DIR/netns.log" "${where[@]}" socat \
        "TCP-LISTEN:$port,bind=$addr,reuseaddr,fork,nodelay,backlog=128" "TCP:$target:$port,nodelay"
    local _
    for _ in {1..50}; do
        if [[ "$side" == ns ]]; then netns_listening ns "$addr" "$port" && return 0; else netns_listening "$addr" "$port" && return 0; fi
        sleep 0.1
    done
    die "socat did not listen on $addr:$port ($side side; see $CLUSTER_DIR/netns.log)"
}

# The namespace, its two links and every forwarder (idempotent).
netns_up() {
    ensure_netns_tools
    local ns link inner n="$CLUSTER_NETNS_NODE" i port
    ns="$(netns_name)"
    if ! netns_exists; then
        log "RabbitMQ cluster: network namespace $ns for node $(cluster_node_name "$n")"
        ip netns add "$ns" || die "ip netns add $ns failed (network namespaces need root)"
        ip -n "$ns" link set lo up
    fi
    for link in cluster client; do
        inner="$link"
        if ! ip link show "$(netns_if "$link")" >/dev/null 2>&1; then
            ip link add "$(netns_if "$link")" type veth peer name "$inner" netns "$ns"
            ip addr add "$(netns_addr "$link" host)/30" dev "$(netns_if "$link")"
            ip -n "$ns" addr add "$(netns_addr "$link" ns)/30" dev "$inner"
            ip -n "$ns" link set "$inner" up
            ip link set "$(netns_if "$link")" up
        fi
    done
    local c_host c_ns p_host p_ns web_host web_port
    c_host="$(netns_addr cluster host)" c_ns="$(netns_addr cluster ns)"
    p_host="$(netns_addr client host)" p_ns="$(netns_addr client ns)"
    cluster_select "$n"
    # Into the namespace: its distribution port over the cluster link (it listens there), the
    # rest over the client link.
    netns_forward host 127.0.0.1 "$((AMQP_PORT + 20000))" "$c_ns"
    for port in "$AMQP_PORT" "$MQTT_PORT" "$MGMT_PORT" "$PROM_PORT"; do
        netns_forward ns "$p_ns" "$port" 127.0.0.1
        netns_forward host 127.0.0.1 "$port" "$p_ns"
    done
    # Out of it: epmd and the other nodes' distribution ports, and the web app's auth endpoints.
    for port in 4369 $(for ((i = 1; i <= CLUSTER_SIZE; i++)); do ((i == n)) || echo $((CLUSTER_PORT_BASE + i + 20000)); done); do
        netns_forward host "$c_host" "$port" 127.0.0.1
        netns_forward ns 127.0.0.1 "$port" "$c_host"
    done
    read -r web_host web_port <<<"$(url_host_port "$WEB_AUTH_URL" 80)"
    if [[ "$web_host" == 127.0.0.1 || "$web_host" == localhost ]]; then
        netns_forward host "$p_host" "$web_port" 127.0.0.1
        netns_forward ns 127.0.0.1 "$web_port" "$p_host"
    fi
}

netns_down() {
    local pid_file pid
    for pid_file in "$RUN_DIR"/cluster-fwd-*.pid; do
        [[ -e "$pid_file" ]] || continue
        pid="$(read_pid "$pid_file")"
        # The forwarder and the connections it forked: one process group.
        [[ -z "$pid" ]] || kill -TERM -- "-$pid" 2>/dev/null || true
        rm -f "$pid_file"
    done
    if netns_exists; then
        ip netns del "$(netns_name)"
        log "RabbitMQ cluster: network namespace $(netns_name) removed"
    fi
    local link
    for link in cluster client; do ip link del "$(netns_if "$link")" 2>/dev/null || true; done
}

cluster_usage() {
    echo "usage: $0 cluster up|down|status|env|kill NODE|stop NODE|start NODE|cut NODE|heal NODE  (NODE: 1..$CLUSTER_SIZE)" >&2
    exit 2
}

cluster_main() {
    local command="${1:-}" n
    cluster_check_port_base
    case "$command" in
    up | down | status | env) [[ $# -eq 1 ]] || cluster_usage ;;
    kill | stop | start | cut | heal) [[ $# -eq 2 ]] || cluster_usage ;;
    *) cluster_usage ;;
    esac
    cluster_home
    case "$command" in
    env) cluster_env ;;
    status) cluster_status || exit 3 ;;
    up)
        take_lock
        cluster_up
        ;;
    down)
        take_lock
        # A cut node cannot be asked to stop by its peers' tools: heal first.
        [[ -z "$CLUSTER_NETNS_NODE" ]] || ! netns_exists || netns_link cluster up
        for ((n = CLUSTER_SIZE; n >= 1; n--)); do cluster_stop_node "$n"; done
        [[ -z "$CLUSTER_NETNS_NODE" ]] || netns_down
        ;;
    kill)
        n="$(cluster_node_arg "$2")"
        take_lock
        cluster_kill_node "$n"
        ;;
    stop)
        n="$(cluster_node_arg "$2")"
        take_lock
        cluster_stop_node "$n"
        ;;
    start)
        n="$(cluster_node_arg "$2")"
        take_lock
        cluster_start_node "$n"
        ;;
    cut | heal)
        n="$(cluster_node_arg "$2")"
        [[ "$n" == "$CLUSTER_NETNS_NODE" ]] ||
            die "cluster $command: node $n is not in a network namespace (FAIRWAY_CLUSTER_NETNS_NODE=${CLUSTER_NETNS_NODE:-unset})"
        netns_exists || die "cluster $command: the network namespace $(netns_name) is not set up (cluster up first)"
        take_lock
        if [[ "$command" == cut ]]; then
            netns_link cluster down
            log "RabbitMQ cluster: node $(cluster_node_name "$n")'s cluster link is cut (distribution and epmd); clients still reach it"
        else
            netns_link cluster up
            log "RabbitMQ cluster: node $(cluster_node_name "$n")'s cluster link is back"
        fi
        ;;
    esac
}

# ---------------------------------------------------------------- commands

# PostgreSQL matters when FerretDB is to run on it, or when ours is up anyway.
postgres_in_use() {
    [[ "$(mongo_mode)" == ferretdb && "$FERRETDB_BACKEND" == postgresql ]] || pg_ours_alive
}

status_all() {
    local rc=0
    status_rabbitmq || rc=3
    status_mongo || rc=3
    if postgres_in_use; then
        status_postgres || rc=3
    fi
    return "$rc"
}

require_managed_mongo() {
    local mode
    mode="$(mongo_mode)"
    [[ "$mode" != external ]] || die "FAIRWAY_MONGO_URL=$MONGO_URL is external; $1 only works on the local database"
    pid_alive "$(mongo_pid)" || ! tcp_open 127.0.0.1 "$MONGO_PORT" ||
        die "port $MONGO_PORT is served by a process not started by this script; $1 cannot control it"
}

usage() {
    echo "usage: $0 up|down|status|start-rabbitmq|stop-rabbitmq|restart-rabbitmq|start-mongo|stop-mongo|tls-certs" >&2
    echo "       $0 cluster up|down|status|env|kill NODE|stop NODE|start NODE|cut NODE|heal NODE" >&2
    exit 2
}

main() {
    if [[ "${1:-}" == cluster ]]; then
        cluster_main "${@:2}"
        return
    fi
    [[ $# -eq 1 ]] || usage
    [[ "$FERRETDB_BACKEND" == postgresql || "$FERRETDB_BACKEND" == sqlite ]] ||
        die "FAIRWAY_FERRETDB_BACKEND must be postgresql or sqlite, not '$FERRETDB_BACKEND'"
    case "$1" in
    status)
        status_all || exit 3
        ;;
    up)
        take_lock
        start_rabbitmq
        start_mongo
        status_all || exit 3
        if [[ "$(mongo_mode)" == ferretdb && "$(running_backend)" == postgresql ]]; then
            # Fairway creates FerretDB's missing GIN indexes through this (fairway/storage/ferretdb.py).
            log "for the GIN indexes: export FAIRWAY_POSTGRES_URL=$PG_URL"
        fi
        ;;
    down)
        take_lock
        stop_rabbitmq
        stop_mongo
        stop_postgres
        ;;
    start-rabbitmq)
        take_lock
        start_rabbitmq
        ;;
    stop-rabbitmq)
        take_lock
        stop_rabbitmq
        ;;
    restart-rabbitmq)
        take_lock
        stop_rabbitmq
        start_rabbitmq
        ;;
    start-mongo)
        take_lock
        start_mongo
        ;;
    stop-mongo)
        take_lock
        require_managed_mongo stop-mongo
        stop_mongo
        ;;
    tls-certs)
        take_lock
        ensure_tls_certs
        log "TLS: $TLS_DIR/ca.pem, server.pem, server-key.pem"
        ;;
    *) usage ;;
    esac
}

main "$@"
