#!/usr/bin/env bash
# The test command of the project (README, CI's .ci/run). Runs, in this order:
#   fmt      cargo fmt --check                                  (fast, fails first)
#   clippy   cargo clippy --workspace --all-targets --locked -- -D warnings
#   build    cargo build --workspace --all-targets --locked     (the one build)
#   tests    cargo nextest run --workspace --locked             (cargo test if no nextest)
#   doctests cargo test --workspace --doc --locked
#   interop  pytest interop/ against target/debug/{starling,starlingctl}
# Installs what the steps need when missing: rustfmt/clippy via rustup, python3 and
# its venv module, ejabberd (for its default config file and the federation tests), Prosody
# (federation tests), HAProxy and PostgreSQL (binaries for the tests' private servers) via apt
# (Debian, as root; their services are never started), Chromium (browser test) via apt,
# interop/js's npm packages (npm ci, pinned by its package-lock.json),
# the pinned Python packages of
# interop/requirements.txt into interop/.venv.
#
# Every step runs even after a failure (one CI run shows every problem), except
# that tests are skipped when the build failed. Exit status: 0 if all passed.
#
# Options: --fail-fast (stop at the first failure), --skip STEP (repeatable),
#          --only STEP (repeatable), -h. Extra pytest arguments: PYTEST_ARGS="-k roster".
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=$ROOT/interop/.venv
REQUIREMENTS=$ROOT/interop/requirements.txt
ALL_STEPS=(fmt clippy build tests doctests interop)

fail_fast=0
skip=()
only=()
while (($#)); do
    case $1 in
        --fail-fast) fail_fast=1 ;;
        --skip) skip+=("${2:?--skip needs a step}"); shift ;;
        --only) only+=("${2:?--only needs a step}"); shift ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "test.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-$([[ -t 1 ]] && echo always || echo never)}
export DEBIAN_FRONTEND=noninteractive
# A fresh clone never reuses incremental state; it would only double the size
# of target/ (CI once ran out of disk on it).
[[ ${CI:-} == true ]] && export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

wanted() {
    local step=$1 s
    if ((${#only[@]})); then
        for s in "${only[@]}"; do [[ $s == "$step" ]] && return 0; done
        return 1
    fi
    for s in "${skip[@]+"${skip[@]}"}"; do [[ $s == "$step" ]] && return 1; done
    return 0
}

# ---------------------------------------------------------------- prerequisites

apt_updated=0
apt_install() {
    command -v apt-get >/dev/null || die "need $* but there is no apt-get; install them by hand"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "need $* (apt) but not root and no sudo"
        sudo=(sudo -n)
    fi
    if ((!apt_updated)); then
        "${sudo[@]}" apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install $*"
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"
}

ensure_cargo() {
    command -v cargo >/dev/null || die "cargo not found: install Rust ${RUST_MIN:-1.94}+ (rustup)"
}

ensure_component() { # $1 = cargo subcommand, $2 = rustup component
    cargo "$1" --version >/dev/null 2>&1 && return 0
    command -v rustup >/dev/null || die "cargo $1 missing and no rustup to add $2"
    log "rustup component add $2"
    rustup component add "$2"
}

ensure_venv() {
    local stamp=$VENV/.requirements.sha256 want
    want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
    if [[ -x $VENV/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
        return 0
    fi
    # Debian's python3 lacks venv/ensurepip until python3-venv is installed.
    if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        apt_install python3 python3-venv
    fi
    log "creating $VENV from interop/requirements.txt"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r "$REQUIREMENTS"
    echo "$want" >"$stamp"
}

ensure_ejabberd() {
    # Tests load Debian's /etc/ejabberd/ejabberd.yml (ejabberd's own default file must start
    # Starling). Only the files are needed: keep the package's service from starting.
    [[ -f /etc/ejabberd/ejabberd.yml ]] && return 0
    local policy=/usr/sbin/policy-rc.d created=0 rc=0
    if ((EUID == 0)) && [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
    fi
    apt_install ejabberd || rc=$?
    ((created)) && rm -f "$policy"
    return "$rc"
}

ensure_prosody() {
    # interop/test_federation.py starts a private Prosody (and ejabberd) itself, from its own
    # config in a temp dir: only the package's files are needed, never its service. openssl
    # makes the tests' certificates.
    command -v openssl >/dev/null || apt_install openssl || return 1
    command -v prosody >/dev/null && command -v prosodyctl >/dev/null && return 0
    local policy=/usr/sbin/policy-rc.d created=0 rc=0
    if ((EUID == 0)) && [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
    fi
    apt_install prosody || rc=$?
    ((created)) && rm -f "$policy"
    return "$rc"
}

ensure_postgres() {
    # The PostgreSQL conformance and end-to-end tests start a private server themselves
    # (testkit::postgres): only the binaries are needed, never the Debian service.
    command -v initdb >/dev/null && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && return 0
    local policy=/usr/sbin/policy-rc.d created=0 rc=0
    if ((EUID == 0)) && [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
    fi
    apt_install postgresql || rc=$?
    ((created)) && rm -f "$policy"
    return "$rc"
}

ensure_node_modules() {
    # interop/test_websocket.py runs real JavaScript XMPP clients (@xmpp/client, playwright-core)
    # and interop/test_bosh.py strophe.js (with xhr2, @xmldom/xmldom) from interop/js, pinned
    # by its package-lock.json. Node >= 20.10 comes with the machine
    # (Debian's own nodejs is too old for @xmpp/client).
    local js=$ROOT/interop/js stamp want
    command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm || return 1
    stamp=$js/node_modules/.package-lock.sha256
    want=$(sha256sum "$js/package-lock.json" | cut -d' ' -f1)
    [[ -f $stamp && $(cat "$stamp") == "$want" ]] && return 0
    log "npm ci in interop/js"
    (cd "$js" && npm ci --no-audit --no-fund --loglevel=error) || return 1
    echo "$want" >"$stamp"
}

ensure_chromium() {
    # The browser test drives Debian's Chromium headless (never a browser playwright downloads).
    [[ -x /usr/bin/chromium ]] && return 0
    apt_install chromium
}

ensure_haproxy() {
    # crates/server/tests/haproxy.rs runs a private haproxy (foreground, its own config and
    # ports): only the binary is needed, never the Debian service.
    command -v haproxy >/dev/null && return 0
    [[ -x /usr/sbin/haproxy ]] && return 0
    local policy=/usr/sbin/policy-rc.d created=0 rc=0
    if ((EUID == 0)) && [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
    fi
    apt_install haproxy || rc=$?
    ((created)) && rm -f "$policy"
    return "$rc"
}

ensure_nftables() {
    # crates/server/tests/cluster_partition.rs cuts links with nft rules inside a network
    # namespace it creates (root only); only the binary is needed, no ruleset or service.
    command -v nft >/dev/null && return 0
    [[ -x /usr/sbin/nft ]] && return 0
    ((EUID == 0)) || return 0
    apt_install nftables
}

# ---------------------------------------------------------------- steps

declare -A status=() took=()
failed=0

run_step() { # $1 = name, rest = command
    local name=$1 start rc=0
    shift
    if ! wanted "$name"; then
        status[$name]=skipped
        return 0
    fi
    if ((fail_fast && failed)); then
        status[$name]="not run"
        return 0
    fi
    log "$name: $*"
    start=$SECONDS
    "$@" || rc=$?
    took[$name]=$((SECONDS - start))
    if ((rc == 0)); then
        status[$name]=ok
    else
        status[$name]="FAILED (exit $rc)"
        failed=1
    fi
}

step_fmt() { ensure_component fmt rustfmt && cargo fmt --all --check; }
step_clippy() {
    ensure_component clippy clippy && cargo clippy --workspace --all-targets --locked -- -D warnings
}
step_build() { cargo build --workspace --all-targets --locked; }
step_tests() {
    ensure_ejabberd || return 1
    ensure_postgres || return 1
    ensure_haproxy || return 1
    ensure_nftables || return 1
    local profile=default
    [[ ${CI:-} == true ]] && profile=ci
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace --locked --profile "$profile" --no-tests=warn
    else
        echo "cargo-nextest not installed: falling back to cargo test"
        cargo test --workspace --locked
    fi
}
step_doctests() { cargo test --workspace --doc --locked; }
step_interop() {
    ensure_venv || return 1
    ensure_ejabberd || return 1
    ensure_prosody || return 1
    ensure_node_modules || return 1
    ensure_chromium || return 1
    local target
    target=$(cargo metadata --format-version 1 --no-deps --locked |
        "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') || return 1
    # shellcheck disable=SC2086 # PYTEST_ARGS is a word list on purpose
    STARLING_BIN=$target/debug/starling STARLINGCTL_BIN=$target/debug/starlingctl \
        "$VENV/bin/python" -m pytest "$ROOT/interop" ${PYTEST_ARGS:-}
}

ensure_cargo
run_step fmt step_fmt
run_step clippy step_clippy
run_step build step_build
if [[ ${status[build]} == ok || ${status[build]} == skipped ]]; then
    run_step tests step_tests
    run_step doctests step_doctests
    run_step interop step_interop
else
    for s in tests doctests interop; do wanted "$s" && status[$s]="not run (build failed)"; done
fi

# ---------------------------------------------------------------- summary

printf '\n==> summary\n'
for s in "${ALL_STEPS[@]}"; do
    [[ -n ${status[$s]:-} ]] || continue
    if [[ -n ${took[$s]:-} ]]; then
        printf '  %-9s %s (%ss)\n' "$s" "${status[$s]}" "${took[$s]}"
    else
        printf '  %-9s %s\n' "$s" "${status[$s]}"
    fi
done
if ((failed)); then
    echo "test.sh: FAILED"
    exit 1
fi
echo "test.sh: all steps ok"
