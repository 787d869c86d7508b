#!/usr/bin/env bash
# Runs the same starling-bench load against ejabberd (Debian package) and Starling, one after
# the other, each started here on loopback with its own temporary config, data and logs, and
# prints both results and the Starling/ejabberd ratios. Nothing is recorded automatically:
# copy the figures into docs/PERFORMANCE.md by hand.
#
# Parameters (environment):
#   USERS=10000 PAIRS=100 RATE=2000 DURATION=30   the load (RATE: total messages/s)
#   RAMP=500 CONCURRENCY=64 IDLE=10 GRACE=5        login ramp (/s), logins in flight, idle hold (s)
#   SERVERS="ejabberd starling"                    which servers, in this order
#   TLS=starttls                                   or direct (XEP-0368)
#   STARLING_REGISTER=ibr                          ibr: XEP-0077 through starling-bench --register;
#                                                  ctl: parallel `starlingctl register`
#   REGISTER_JOBS=8                                parallel starlingctl processes
#   BENCH, STARLING, STARLINGCTL                   binaries (default: target/release/...)
#   KEEP=1                                         keep the temporary directory (logs, configs)
#
# Needs: ejabberd (apt-get install ejabberd; its system service stopped), openssl, python3,
# and a release build: cargo build --release -p starling-bench -p starling-server -p starling-ctl.
#
# Notes: the open-files limit is raised as far as the hard limit allows (each side needs one
# descriptor per connection). All connections come from 127.0.0.1, so one run cannot exceed
# the ephemeral port range (~28,000 ports by default): 10,000 users fit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
USERS=${USERS:-10000}
PAIRS=${PAIRS:-100}
RATE=${RATE:-2000}
DURATION=${DURATION:-30}
RAMP=${RAMP:-500}
CONCURRENCY=${CONCURRENCY:-64}
IDLE=${IDLE:-10}
GRACE=${GRACE:-5}
TLS=${TLS:-starttls}
SERVERS=${SERVERS:-"ejabberd starling"}
STARLING_REGISTER=${STARLING_REGISTER:-ibr}
REGISTER_JOBS=${REGISTER_JOBS:-8}
DOMAIN=bench.test
PASSWORD=pass
BENCH=${BENCH:-$ROOT/target/release/starling-bench}
STARLING=${STARLING:-$ROOT/target/release/starling}
STARLINGCTL=${STARLINGCTL:-$ROOT/target/release/starlingctl}
KEEP=${KEEP:-0}

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
log "open-files limit $(ulimit -n); load average $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
if (( USERS > 25000 )); then
    log "warning: $USERS connections from one loopback address may exhaust ephemeral ports"
fi
if (( $(ulimit -n) < USERS + 100 )); then
    log "warning: open-files limit $(ulimit -n) is below USERS=$USERS; logins will fail"
fi
[[ -x $BENCH ]] || die "$BENCH missing: cargo build --release -p starling-bench"

WORK=$(mktemp -d /tmp/starling-compare.XXXXXX)
# ejabberd runs as its own system user and must reach its config and spool.
chmod 755 "$WORK"
STARTED_PIDS=()

cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        stop_pid "$pid"
    done
    if [[ $KEEP == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# A free TCP port on 127.0.0.1 (there is a small race until the server binds it).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port PORT PID SECONDS: until PORT accepts connections; fails if PID dies first.
wait_port() {
    local port=$1 pid=$2 deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# stop_pid PID: SIGTERM (both servers shut down cleanly on it), SIGKILL after 30 s.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    log "pid $pid ignored SIGTERM; killing"
    kill -KILL "$pid" 2>/dev/null || true
}

# Self-signed certificate for $DOMAIN; one PEM with certificate and key, as ejabberd wants.
make_cert() {
    local dir=$1
    openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=$DOMAIN" \
        -addext "subjectAltName=DNS:$DOMAIN" \
        -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
    cat "$dir/cert.pem" "$dir/key.pem" > "$dir/bench.pem"
}

# run_bench LABEL PORT PID: the measured run; the JSON line goes to $WORK/LABEL.json.
run_bench() {
    local label=$1 port=$2 pid=$3
    log "$label: load average $(cut -d' ' -f1-3 /proc/loadavg) before the run"
    "$BENCH" --port "$port" --domain "$DOMAIN" --users "$USERS" --pairs "$PAIRS" \
        --rate "$RATE" --duration "$DURATION" --ramp "$RAMP" --concurrency "$CONCURRENCY" \
        --idle "$IDLE" --grace "$GRACE" --tls "$TLS" --password-prefix "$PASSWORD" \
        --server-pid "$pid" --label "$label" | tee "$WORK/$label.out"
    head -n1 "$WORK/$label.out" > "$WORK/$label.json"
}

register_ibr() {
    local port=$1
    "$BENCH" --register --port "$port" --domain "$DOMAIN" --users "$USERS" \
        --concurrency 32 --ramp 100000 --tls "$TLS" --password-prefix "$PASSWORD" >&2
}

bench_ejabberd() {
    command -v ejabberdctl >/dev/null || die "ejabberdctl not found (apt-get install ejabberd)"
    local dir=$WORK/ejabberd port dist node launcher pid=""
    mkdir -p "$dir/spool" "$dir/logs"
    port=$(free_port)
    dist=$(free_port)
    node="starlingbench$$@localhost"
    make_cert "$dir"
    # The same small module set as Starling's run below; no shaper; a deep session queue;
    # plain stored passwords (fastest registration and PLAIN login; Starling always stores
    # salted SCRAM keys, so its PLAIN logins pay PBKDF2).
    cat > "$dir/ejabberd.yml" <<EOF
hosts: [$DOMAIN]
loglevel: warning
certfiles: ["$dir/bench.pem"]
auth_method: internal
auth_password_format: plain
registration_timeout: infinity
max_fsm_queue: 10000
access_rules:
  register:
    allow: all
shaper_rules:
  c2s_shaper: none
listen:
  - port: $port
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: true
    shaper: c2s_shaper
    max_stanza_size: 262144
    backlog: 1024
modules:
  mod_disco: {}
  mod_ping: {}
  mod_roster: {}
  mod_offline: {}
  mod_register:
    access: register
    ip_access: all
EOF
    # Own node name and distribution port (no epmd), so other Erlang nodes are untouched.
    # Busy-waiting schedulers are turned off: they burn idle CPU that would be charged to the
    # messages (this favours ejabberd).
    cat > "$dir/ejabberdctl.cfg" <<EOF
ERLANG_NODE=$node
ERL_DIST_PORT=$dist
INET_DIST_INTERFACE=127.0.0.1
ERL_MAX_PORTS=65536
ERL_PROCESSES=1000000
EJABBERD_BYPASS_WARNINGS=true
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 +sbwt none +sbwtdcpu none +sbwtdio none"
EOF
    echo '{lookup, [file, native]}.' > "$dir/inetrc"
    chown -R ejabberd:ejabberd "$dir"
    log "ejabberd $(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null): starting on 127.0.0.1:$port"
    # ejabberdctl would `su` to the ejabberd user, and PAM then resets the open-files limit to
    # 1024; setpriv switches user without PAM, so the limit raised above is inherited.
    local as_ejabberd=()
    if [[ $(id -u) == 0 ]]; then
        as_ejabberd=(setpriv --reuid=ejabberd --regid=ejabberd --init-groups
            env HOME="$(getent passwd ejabberd | cut -d: -f6)")
    fi
    "${as_ejabberd[@]}" ejabberdctl --config-dir "$dir" --spool "$dir/spool" \
        --logs "$dir/logs" foreground > "$dir/foreground.log" 2>&1 &
    launcher=$!
    for _ in $(seq 1 100); do
        pid=$(pgrep -u ejabberd -f "beam.smp.* -sname $node" | head -n1 || true)
        [[ -n $pid ]] && break
        kill -0 "$launcher" 2>/dev/null || break
        sleep 0.2
    done
    [[ -n $pid ]] || { cat "$dir/foreground.log" >&2; die "ejabberd did not start"; }
    STARTED_PIDS+=("$pid")
    wait_port "$port" "$pid" 90 || { cat "$dir/foreground.log" >&2; die "ejabberd not listening"; }
    log "ejabberd: beam pid $pid, $(grep 'open files' "/proc/$pid/limits" | tr -s ' ')"
    log "ejabberd: registering $USERS users (XEP-0077)"
    register_ibr "$port"
    run_bench ejabberd "$port" "$pid"
    stop_pid "$pid"
    wait "$launcher" 2>/dev/null || true
}

bench_starling() {
    [[ -x $STARLING && -x $STARLINGCTL ]] ||
        die "$STARLING or $STARLINGCTL missing: cargo build --release --bin starling --bin starlingctl"
    local dir=$WORK/starling port pid
    mkdir -p "$dir/data"
    port=$(free_port)
    make_cert "$dir"
    cat > "$dir/starling.yml" <<EOF
hosts: [$DOMAIN]
loglevel: warning
data_dir: "$dir/data"
certfiles: ["$dir/bench.pem"]
listen:
  - port: $port
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: true
    max_stanza_size: 262144
registration_timeout: infinity
acl:
  local:
    user_regexp: ""
access_rules:
  register:
    allow: all
modules:
  mod_disco: {}
  mod_ping: {}
  mod_roster: {}
  mod_offline: {}
  mod_register:
    access: register
    ip_access: all
EOF
    log "starling: starting on 127.0.0.1:$port"
    "$STARLING" --config "$dir/starling.yml" > "$dir/starling.log" 2>&1 &
    pid=$!
    STARTED_PIDS+=("$pid")
    wait_port "$port" "$pid" 90 || { cat "$dir/starling.log" >&2; die "starling not listening"; }
    log "starling: pid $pid; registering $USERS users ($STARLING_REGISTER)"
    if [[ $STARLING_REGISTER == ibr ]]; then
        register_ibr "$port"
    else
        local start=$SECONDS
        seq 0 $((USERS - 1)) |
            xargs -P "$REGISTER_JOBS" -I{} "$STARLINGCTL" --config "$dir/starling.yml" \
                register "bench{}" "$DOMAIN" "$PASSWORD" > "$dir/register.log" 2>&1 ||
            { tail -n 5 "$dir/register.log" >&2; die "starlingctl register failed"; }
        log "starling: registered in $((SECONDS - start)) s"
    fi
    run_bench starling "$port" "$pid"
    stop_pid "$pid"
    wait "$pid" 2>/dev/null || true
}

for server in $SERVERS; do
    case $server in
        ejabberd) bench_ejabberd ;;
        starling) bench_starling ;;
        *) die "unknown server $server" ;;
    esac
done

# Side-by-side figures and the ratios the design targets are stated in.
python3 - "$WORK" $SERVERS <<'EOF'
import json, sys, os
work, servers = sys.argv[1], sys.argv[2:]
runs = {}
for s in servers:
    path = os.path.join(work, s + ".json")
    if os.path.exists(path):
        with open(path) as f:
            runs[s] = json.loads(f.readline())
rows = [("connected", "connected"), ("logins/s", "logins_per_sec"),
        ("KiB per idle conn", "kib_per_conn"), ("idle CPU % of core", "idle_cpu_pct"),
        ("msgs sent", "sent"),
        ("msgs received", "received"), ("lost", "lost"), ("achieved msg/s", "achieved_rate"),
        ("p50 latency µs", "p50_us"), ("p99 latency µs", "p99_us"),
        ("CPU µs per msg", "cpu_us_per_msg"), ("load avg", "load_avg")]
def fmt(v):
    return "n/a" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))
print()
print(f"{'':22}" + "".join(f"{s:>16}" for s in runs))
for name, key in rows:
    print(f"{name:22}" + "".join(f"{fmt(r.get(key)):>16}" for r in runs.values()))
if "starling" in runs and "ejabberd" in runs:
    s, e = runs["starling"], runs["ejabberd"]
    print("\nStarling / ejabberd:")
    for name, key, target in [("KiB per idle connection", "kib_per_conn", "<= 0.25"),
                              ("CPU per delivered message", "cpu_us_per_msg", "<= 0.33"),
                              ("p99 latency", "p99_us", "(absolute target: < 5 ms)")]:
        a, b = s.get(key), e.get(key)
        ratio = f"{a / b:.3f}" if a is not None and b not in (None, 0) else "n/a"
        print(f"  {name:28} {ratio:>8}   target {target}")
EOF
