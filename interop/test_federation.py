"""Federation between Starling and real Prosody and ejabberd servers (Debian packages).

Three servers, each on its own loopback address and domain: Starling `starling.test` on
127.0.0.20, Prosody `prosody.test` on 127.0.0.21, ejabberd `ejabberd.test` on 127.0.0.22.
No DNS is used (see federation_servers.py for how each one finds the others).

Every check runs in both modes, each with its own three servers:
- `dialback`: self-signed certificates that validate nowhere, so the servers authenticate
  each other with XEP-0220 Server Dialback (over STARTTLS);
- `ca`: certificates from a test CA every server trusts, dialback disabled everywhere
  (Starling `s2s_use_starttls: required_trusted`, Prosody `s2s_secure_auth`, ejabberd
  without `mod_s2s_dialback`), so SASL EXTERNAL (RFC 6120 §6, §13.7) is the only way.

Checked in both directions with each remote: a chat message, a presence subscription
(subscribe → subscribed, then the contact's presence arrives), and an XEP-0199 ping to the
remote server itself; then `starlingctl s2s_connections` must show incoming and outgoing
streams with the expected authentication method.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from federation_servers import (
    CertFiles,
    EjabberdServer,
    ProsodyServer,
    Remote,
    TestCa,
    free_port,
    self_signed,
)
from server_process import Account, Binaries, StarlingServer
from xmpp_client import WAIT, ClientFactory, TestClient

STARLING = ("starling.test", "127.0.0.20")
PROSODY = ("prosody.test", "127.0.0.21")
EJABBERD = ("ejabberd.test", "127.0.0.22")

# Lifecycle of both remote servers (start ~2 s for ejabberd) plus the checks.
pytestmark = pytest.mark.timeout(90)


@dataclass
class Federation:
    mode: str
    starling: StarlingServer
    remotes: dict[str, Remote]


def _start_all(mode: str, workdir: Path, binaries: Binaries) -> Federation:
    workdir.mkdir(parents=True, exist_ok=True)
    if mode == "ca":
        ca = TestCa(workdir)
        cafile: Path | None = ca.cert
        certs: dict[str, CertFiles] = {d: ca.issue(d) for d, _ in (STARLING, PROSODY, EJABBERD)}
    else:
        cafile = None
        certs = {d: self_signed(workdir, d) for d, _ in (STARLING, PROSODY, EJABBERD)}
    secure = mode == "ca"
    starling_s2s = free_port(STARLING[1])
    to_starling = {STARLING[0]: (STARLING[1], starling_s2s)}
    remotes: dict[str, Remote] = {}
    starling = None
    try:
        remotes["prosody"] = ProsodyServer.start(
            workdir / "prosody",
            host=PROSODY[0],
            ip=PROSODY[1],
            certs=certs[PROSODY[0]],
            routes=to_starling,
            cafile=cafile,
            secure=secure,
        )
        remotes["ejabberd"] = EjabberdServer.start(
            host=EJABBERD[0],
            ip=EJABBERD[1],
            certs=certs[EJABBERD[0]],
            routes=to_starling,
            outgoing_port=starling_s2s,
            cafile=cafile,
            secure=secure,
        )
        routes = ", ".join(f'{r.host}: "{r.ip}:{r.s2s_port}"' for r in remotes.values())
        extra = (
            "registration_timeout: infinity\n"
            f'certfiles: ["{certs[STARLING[0]].combined}"]\n'
            f"s2s_static_routes: {{{routes}}}\n"
        )
        if secure:
            extra += f's2s_use_starttls: required_trusted\ns2s_cafile: "{cafile}"\n'
        starling = StarlingServer.start(
            workdir / "starling",
            binaries,
            host=STARLING[0],
            ip=STARLING[1],
            extra_config=extra,
            listeners=f"  - {{port: {starling_s2s}, ip: {STARLING[1]}, module: ejabberd_s2s_in}}\n",
        )
    except BaseException:
        for r in remotes.values():
            r.stop()
        raise
    return Federation(mode=mode, starling=starling, remotes=remotes)


@pytest.fixture(scope="module", params=["dialback", "ca"])
def federation(
    request: pytest.FixtureRequest, binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    fed = _start_all(request.param, tmp_path_factory.mktemp(f"federation-{request.param}"), binaries)
    yield fed
    fed.starling.stop()
    for r in fed.remotes.values():
        r.stop()


@pytest.fixture(params=["prosody", "ejabberd"])
def remote(request: pytest.FixtureRequest, federation: Federation) -> Remote:
    return federation.remotes[request.param]


@dataclass
class Pair:
    """A logged-in, available user on each side."""

    local: TestClient
    local_account: Account
    remote: TestClient
    remote_account: Account


@pytest.fixture
async def pair(federation: Federation, remote: Remote) -> AsyncIterator[Pair]:
    local_factory = ClientFactory(federation.starling)
    remote_factory = ClientFactory(remote)  # type: ignore[arg-type]
    la = federation.starling.new_account("s")
    ra = remote.new_account("r")
    try:
        local = await local_factory.login(la, presence=True)
        far = await remote_factory.login(ra, presence=True)
        yield Pair(local=local, local_account=la, remote=far, remote_account=ra)
    finally:
        await local_factory.close_all()
        await remote_factory.close_all()


NOT_AVAILABLE = ("unavailable", "subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe", "error")


def _available(p: Any) -> bool:
    return p["type"] not in NOT_AVAILABLE


async def _message(sender: TestClient, receiver: TestClient, to: Account, sender_jid: str) -> None:
    body = f"hello {to.jid} from {sender_jid}"
    sender.send_message(mto=to.jid, mbody=body, mtype="chat")
    msg = await receiver.messages.wait_for(lambda m: m["body"] == body, f"message to {to.jid}")
    assert msg["type"] == "chat"
    assert msg["from"].bare == sender_jid


async def test_message_both_ways(pair: Pair) -> None:
    await _message(pair.local, pair.remote, pair.remote_account, pair.local_account.jid)
    await _message(pair.remote, pair.local, pair.local_account, pair.remote_account.jid)


async def _subscribe(asker: TestClient, asker_jid: str, contact: TestClient, contact_jid: str) -> None:
    # Roster results and subscription answers go to "interested" resources, those that
    # fetched the roster (RFC 6121 §2.1.6; Prosody enforces it), as real clients do first.
    await asker.fetch_roster()
    await contact.fetch_roster()
    asker.send_presence(pto=contact_jid, ptype="subscribe")
    await contact.presences.wait_for(
        lambda p: p["type"] == "subscribe" and p["from"].bare == asker_jid, f"subscribe from {asker_jid}"
    )
    contact.send_presence(pto=asker_jid, ptype="subscribed")
    await asker.presences.wait_for(
        lambda p: p["type"] == "subscribed" and p["from"].bare == contact_jid,
        f"subscribed from {contact_jid}",
    )
    # RFC 6121 §3.1.5: the contact's server then sends the contact's current presence.
    await asker.presences.wait_for(
        lambda p: _available(p) and p["from"].bare == contact_jid, f"available presence of {contact_jid}"
    )
    roster = await asker.fetch_roster()
    assert roster[contact_jid]["subscription"] in ("to", "both"), roster


async def test_presence_subscription_both_ways(pair: Pair) -> None:
    la, ra = pair.local_account.jid, pair.remote_account.jid
    await _subscribe(pair.local, la, pair.remote, ra)
    await _subscribe(pair.remote, ra, pair.local, la)
    roster = await pair.local.fetch_roster()
    assert roster[ra]["subscription"] == "both", roster
    # Mutual subscription: going unavailable on one side is seen on the other.
    pair.remote.send_presence(ptype="unavailable")
    await pair.local.presences.wait_for(
        lambda p: p["type"] == "unavailable" and p["from"].bare == ra, f"unavailable from {ra}"
    )


async def test_ping_remote_servers(pair: Pair, remote: Remote) -> None:
    for client, target in ((pair.local, remote.host), (pair.remote, STARLING[0])):
        res = await client.plugin["xep_0199"].send_ping(target, timeout=WAIT)
        assert res["type"] == "result"
        assert res["from"].full == target


async def test_auth_method_shown_in_s2s_connections(
    federation: Federation, pair: Pair, remote: Remote
) -> None:
    # Traffic both ways opens a stream in each direction.
    await _message(pair.local, pair.remote, pair.remote_account, pair.local_account.jid)
    await _message(pair.remote, pair.local, pair.local_account, pair.remote_account.jid)
    want = "external" if federation.mode == "ca" else "dialback"
    seen: list[list[str]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        res = federation.starling.ctl("s2s_connections")
        assert res.returncode == 0, res.stderr
        # "in|out LOCAL REMOTE ADDR tls|plain METHOD", one line per connection.
        seen = [line.split() for line in res.stdout.splitlines() if line.strip()]
        mine = {(c[0], c[4], c[5]) for c in seen if len(c) == 6 and c[2] == remote.host}
        if {("in", "tls", want), ("out", "tls", want)} <= mine:
            break
        if loop.time() > deadline:
            raise AssertionError(
                f"expected TLS + {want} both ways with {remote.host}; s2s_connections:\n{res.stdout}"
            )
        await asyncio.sleep(0.2)
    log = federation.starling.log_path.read_text(errors="replace")
    assert "s2s incoming stream authenticated" in log
