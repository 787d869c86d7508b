"""BOSH (XEP-0124/0206) with a real JavaScript client against a `starling` process.

strophe.js on node (xhr2 as its XMLHttpRequest, see interop/js/bosh_client.mjs) logs in over
`/bosh` with SCRAM (PLAIN is not offered over plain HTTP), sends presence and a chat message
to a slixmpp client connected over TCP, receives its reply on a long poll, and terminates the
BOSH session. The JavaScript dependencies are pinned in interop/js (scripts/test.sh runs
`npm ci` there).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from server_process import DEFAULT_EXTRA, HOST, LOOPBACK, Binaries, StarlingServer, free_ports
from test_websocket import JS_DIR, JS_TIMEOUT, answer_one, node_command, run_js
from xmpp_client import ClientFactory


@pytest.fixture(scope="module")
def bosh_server(
    binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[StarlingServer, str]]:
    (port,) = free_ports(1)
    listeners = (
        f"  - port: {port}\n    ip: {LOOPBACK}\n    module: ejabberd_http\n"
        "    request_handlers: {/bosh: mod_bosh}\n"
    )
    # These lines continue the `modules:` mapping before DEFAULT_EXTRA's top-level keys.
    extra = "  mod_stream_mgmt: {}\n  mod_bosh: {max_wait: 5}\n" + DEFAULT_EXTRA
    srv = StarlingServer.start(
        tmp_path_factory.mktemp("starling-bosh"), binaries, extra_config=extra, listeners=listeners
    )
    yield srv, f"http://{LOOPBACK}:{port}/bosh"
    srv.stop()


@pytest.fixture
async def tcp_clients(bosh_server: tuple[StarlingServer, str]) -> AsyncIterator[ClientFactory]:
    factory = ClientFactory(bosh_server[0])
    yield factory
    await factory.close_all()


async def test_strophe_over_bosh_chats_with_a_tcp_client(
    bosh_server: tuple[StarlingServer, str], tcp_clients: ClientFactory
) -> None:
    server, url = bosh_server
    if not (JS_DIR / "node_modules" / "strophe.js").is_dir():
        pytest.fail(f"strophe.js missing: run `npm ci` in {JS_DIR}")
    web = server.new_account("strophe")
    bob = await tcp_clients.login(server.new_account("bob"), presence=True)
    text = "hello over BOSH \N{BIRD}"
    deadline_ms = str(int(JS_TIMEOUT * 1000))
    command = node_command(
        "bosh_client.mjs", url, HOST, web.user, web.password, bob.boundjid.bare, text, deadline_ms
    )
    js = asyncio.create_task(run_js(command))
    try:
        body = await answer_one(bob, web.jid)
    except AssertionError:
        code, events, err = await js
        raise AssertionError(f"bosh_client.mjs exited {code}: {events}\nstderr: {err}") from None
    code, events, err = await js
    assert code == 0, f"bosh_client.mjs exited {code}: {events}\nstderr: {err}"
    assert body == text
    online = next(e for e in events if e.get("event") == "online")
    assert online["jid"].startswith(web.jid + "/")
    assert online["mechanism"] != "PLAIN", "PLAIN offered over plain HTTP"
    reply = next(e for e in events if e.get("event") == "reply")
    assert reply["body"] == "pong: " + text
    assert reply["from"] == bob.boundjid.full
