#!/usr/bin/env bash
# Cross-node messaging benchmark (issue 4): two release Starling nodes clustered on one
# private PostgreSQL, both on loopback. The same starling-bench load runs twice: first with
# every user on node A ("same-node"), then with each pair split across the nodes, senders and
# recipients alternating ("cross-node": every message crosses the cluster link). CPU and RSS
# are summed over both node processes in both runs, so the figures compare the cost of the
# extra hop. Nothing is recorded automatically: copy the figures into docs/PERFORMANCE.md.
#
# Parameters (environment):
#   USERS=2000 PAIRS=500 RATE=2000 DURATION=20 IDLE=3 GRACE=5   the load
#   BENCH, STARLING, STARLINGCTL   binaries (default: target/release/...)
#   KEEP=1                         keep the temporary directory (logs, configs)
#
# Needs: PostgreSQL server binaries (Debian's postgresql package), runuser, python3, openssl,
# and a release build: cargo build --release -p starling-bench -p starling-server -p starling-ctl.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
USERS=${USERS:-2000}
PAIRS=${PAIRS:-500}
RATE=${RATE:-2000}
DURATION=${DURATION:-20}
IDLE=${IDLE:-3}
GRACE=${GRACE:-5}
DOMAIN=bench.test
PASSWORD=pass
BENCH=${BENCH:-$ROOT/target/release/starling-bench}
STARLING=${STARLING:-$ROOT/target/release/starling}
STARLINGCTL=${STARLINGCTL:-$ROOT/target/release/starlingctl}
KEEP=${KEEP:-0}

log() { printf '[cluster-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for bin in "$BENCH" "$STARLING" "$STARLINGCTL"; do
    [[ -x $bin ]] || die "$bin missing: cargo build --release -p starling-bench -p starling-server -p starling-ctl"
done
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[[ -n $PGBIN ]] || die "no PostgreSQL binaries (apt-get install postgresql)"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

WORK=$(mktemp -d /tmp/starling-cluster-bench.XXXXXX)
chmod 755 "$WORK"
NODE_PIDS=()
PGDATA=$WORK/pg
cleanup() {
    local pid
    for pid in "${NODE_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ -f $PGDATA/postmaster.pid ]]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m fast stop >/dev/null 2>&1 || true
    fi
    if [[ $KEEP == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"
}
wait_port() {
    local ip=$1 port=$2 pid=$3
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || return 1
        python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.2)' \
            "$ip" "$port" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

# PostgreSQL, private, on 127.0.0.1.
PGPORT=$(free_port 127.0.0.1)
mkdir -p "$PGDATA" && chown postgres: "$PGDATA"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -A trust -U starling >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" \
    -o "-h 127.0.0.1 -p $PGPORT -k $PGDATA -c fsync=off" -w start >/dev/null
"$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U starling bench
log "PostgreSQL on 127.0.0.1:$PGPORT"

openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=$DOMAIN" \
    -addext "subjectAltName=DNS:$DOMAIN" -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" > "$WORK/bench.pem"
COOKIE=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

# start_node NAME IP: writes the config, starts the node, sets PORT_<NAME>, PID_<NAME>,
# CLUSTER_<NAME>.
start_node() {
    local name=$1 ip=$2 dir=$WORK/$1 port cport pid
    mkdir -p "$dir/data"
    printf '%s\n' "$COOKIE" > "$dir/data/cookie"
    port=$(free_port "$ip")
    cport=$(free_port "$ip")
    cat > "$dir/starling.yml" <<YAML
hosts: [$DOMAIN]
loglevel: warning
data_dir: "$dir/data"
certfiles: ["$WORK/bench.pem"]
listen:
  - {port: $port, ip: "$ip", module: ejabberd_c2s, starttls_required: true, max_stanza_size: 262144}
registration_timeout: infinity
access_rules:
  register:
    allow: all
modules:
  mod_disco: {}
  mod_ping: {}
  mod_roster: {}
  mod_offline: {}
  mod_register: {access: register, ip_access: all}
sql_type: pgsql
sql_server: 127.0.0.1
sql_port: $PGPORT
sql_database: bench
sql_username: starling
sql_pool_size: 10
cluster: {node_name: "starling@$name", listen: "$ip:$cport"}
YAML
    "$STARLING" --config "$dir/starling.yml" > "$dir/starling.log" 2>&1 &
    pid=$!
    NODE_PIDS+=("$pid")
    wait_port "$ip" "$port" "$pid" || { cat "$dir/starling.log" >&2; die "node $name not listening"; }
    printf -v "PORT_$name" '%s' "$port"
    printf -v "PID_$name" '%s' "$pid"
    printf -v "CLUSTER_$name" '%s' "$ip:$cport"
    log "node starling@$name: pid $pid, c2s $ip:$port, cluster $ip:$cport"
}
start_node a 127.0.0.1
start_node b 127.0.0.1
"$STARLINGCTL" --config "$WORK/b/starling.yml" join_cluster "$CLUSTER_a" >&2
"$STARLINGCTL" --config "$WORK/a/starling.yml" cluster_status >&2

log "registering $USERS users"
"$BENCH" --register --port "$PORT_a" --domain "$DOMAIN" --users "$USERS" \
    --concurrency 32 --ramp 100000 --password-prefix "$PASSWORD" >&2

run() {
    local label=$1
    shift
    log "$label: load average $(cut -d' ' -f1-3 /proc/loadavg)"
    "$BENCH" --port "$PORT_a" --domain "$DOMAIN" --users "$USERS" --pairs "$PAIRS" \
        --rate "$RATE" --duration "$DURATION" --idle "$IDLE" --grace "$GRACE" \
        --password-prefix "$PASSWORD" --server-pid "$PID_a" --server-pid-b "$PID_b" \
        --label "$label" "$@" | tee "$WORK/$label.out"
    head -n1 "$WORK/$label.out" > "$WORK/$label.json"
}
run same-node
run cross-node --port-b "$PORT_b"

python3 - "$WORK" <<'PY'
import json, os, sys
work = sys.argv[1]
runs = {}
for label in ("same-node", "cross-node"):
    with open(os.path.join(work, label + ".json")) as f:
        runs[label] = json.loads(f.readline())
rows = [("connected", "connected"), ("msgs sent", "sent"), ("msgs received", "received"),
        ("lost", "lost"), ("achieved msg/s", "achieved_rate"), ("p50 latency µs", "p50_us"),
        ("p99 latency µs", "p99_us"), ("CPU µs per msg (both nodes)", "cpu_us_per_msg"),
        ("load avg", "load_avg")]
def fmt(v):
    return "n/a" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))
print()
print(f"{'':30}{'same-node':>14}{'cross-node':>14}{'ratio':>10}")
for name, key in rows:
    a, b = runs["same-node"].get(key), runs["cross-node"].get(key)
    ratio = f"{b / a:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else ""
    print(f"{name:30}{fmt(a):>14}{fmt(b):>14}{ratio:>10}")
PY
