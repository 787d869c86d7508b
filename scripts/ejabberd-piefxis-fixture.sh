#!/usr/bin/env bash
# Regenerates the XEP-0227 (PIEFXIS) test fixture from a real ejabberd (Debian package):
# starts a private ejabberd on loopback, fills two accounts with the data Starling imports
# (SCRAM credentials, roster, vCard, private XML, an offline message), runs
# `ejabberdctl export_piefxis`, and copies the export (main file + one per host) to $OUT. Needs root (runs ejabberd as its
# own user) and the ejabberd package with its service stopped.
#   scripts/ejabberd-piefxis-fixture.sh [OUT]
set -euo pipefail
OUT=${1:-$(dirname "$0")/../crates/commands/tests/data/ejabberd-export}
DOMAIN=legacy.example
WORK=$(mktemp -d /tmp/starling-piefxis.XXXXXX)
chmod 755 "$WORK"
pid=""
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
dist=$(free_port)
node="starlingfixture$$@localhost"
mkdir -p "$WORK/spool" "$WORK/logs" "$WORK/export"
echo "{lookup, [file, native]}." > "$WORK/inetrc"
cat > "$WORK/ejabberd.yml" <<YML
hosts: [$DOMAIN]
loglevel: warning
auth_method: internal
auth_password_format: scram
auth_scram_hash: sha256
listen:
  - {port: $port, ip: "127.0.0.1", module: ejabberd_c2s}
modules:
  mod_admin_extra: {}
  mod_roster: {}
  mod_vcard: {}
  mod_private: {}
  mod_offline: {}
YML
cat > "$WORK/ejabberdctl.cfg" <<CFG
ERLANG_NODE=$node
ERL_DIST_PORT=$dist
INET_DIST_INTERFACE=127.0.0.1
EJABBERD_BYPASS_WARNINGS=true
CFG
chown -R ejabberd:ejabberd "$WORK"
as_ejabberd=(setpriv --reuid=ejabberd --regid=ejabberd --init-groups env HOME="$(getent passwd ejabberd | cut -d: -f6)")
ctl() { "${as_ejabberd[@]}" ejabberdctl --config-dir "$WORK" --spool "$WORK/spool" --logs "$WORK/logs" "$@"; }
ctl foreground > "$WORK/foreground.log" 2>&1 &
for _ in $(seq 1 150); do
    pid=$(pgrep -u ejabberd -f "beam.smp.* -sname $node" | head -n1 || true)
    [[ -n $pid ]] && ctl status >/dev/null 2>&1 && break
    sleep 0.2
done
ctl status >/dev/null || { cat "$WORK/foreground.log" >&2; echo "ejabberd did not start" >&2; exit 1; }
ctl register alice "$DOMAIN" 'alice-secret'
ctl register bob "$DOMAIN" 'bob-secret'
ctl add_rosteritem alice "$DOMAIN" bob "$DOMAIN" Bobby Friends both
ctl add_rosteritem alice "$DOMAIN" carol remote.example "Carol R" Work to
ctl set_vcard alice "$DOMAIN" FN 'Alice Liddell'
ctl set_vcard alice "$DOMAIN" NICKNAME alice
ctl private_set alice "$DOMAIN" '<storage xmlns="storage:bookmarks"><conference jid="tea@conference.legacy.example" autojoin="true" name="Tea"/></storage>'
ctl send_message chat "bob@$DOMAIN/phone" "alice@$DOMAIN" '' 'Are you there?'
ctl export_piefxis "$WORK/export"
# The main file xi:includes one file per host; keep them together, with stable names.
main=$(grep -l '<server-data' "$WORK"/export/*.xml | head -n1)
[[ -n $main ]] || { echo "no export written" >&2; exit 1; }
rm -rf "$OUT" && mkdir -p "$OUT"
cp "$WORK"/export/*.xml "$OUT"/
echo "wrote $OUT ($(dpkg-query -W -f='ejabberd ${Version}' ejabberd))"
