"""XMPP over WebSocket (RFC 7395) with real JavaScript clients against a `starling` process.

- `@xmpp/client` on node logs in over `/ws` with SCRAM-SHA-1 (PLAIN is not offered over
  plain HTTP) and chats with a slixmpp client connected over TCP.
- A page in Debian's headless Chromium (driven by playwright-core) logs in with
  `@xmpp/client`'s browser build, over a listener with `allow_plain_without_tls` (that build
  has no SCRAM), and chats with a slixmpp client.

The JavaScript lives in interop/js (package.json and package-lock.json pin every version;
scripts/test.sh runs `npm ci` there and installs chromium).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from server_process import DEFAULT_EXTRA, HOST, LOOPBACK, Binaries, StarlingServer, free_ports
from xmpp_client import ClientFactory, TestClient

JS_DIR = Path(__file__).resolve().parent / "js"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# Per-run deadline of each JavaScript client; the pytest timeout (60 s) is above it.
JS_TIMEOUT = 40.0


@dataclass(frozen=True)
class WsServer:
    """A server with two WebSocket endpoints: one offering SCRAM only, one also PLAIN."""

    server: StarlingServer
    scram_url: str
    plain_url: str


@pytest.fixture(scope="module")
def ws(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WsServer]:
    scram_port, plain_port = free_ports(2)
    listeners = (
        f"  - port: {scram_port}\n    ip: {LOOPBACK}\n    module: ejabberd_http\n"
        "    request_handlers: {/ws: ejabberd_http_ws}\n"
        f"  - port: {plain_port}\n    ip: {LOOPBACK}\n    module: ejabberd_http\n"
        "    allow_plain_without_tls: true\n"
        "    request_handlers: {/ws: ejabberd_http_ws}\n"
    )
    # The two lines before DEFAULT_EXTRA continue the `modules:` mapping: real web clients
    # enable stream management when offered.
    extra = "  mod_stream_mgmt: {}\n  mod_offline: {}\n" + DEFAULT_EXTRA
    srv = StarlingServer.start(
        tmp_path_factory.mktemp("starling-ws"), binaries, extra_config=extra, listeners=listeners
    )
    yield WsServer(
        server=srv,
        scram_url=f"ws://{LOOPBACK}:{scram_port}/ws",
        plain_url=f"ws://{LOOPBACK}:{plain_port}/ws",
    )
    srv.stop()


@pytest.fixture
async def tcp_clients(ws: WsServer) -> AsyncIterator[ClientFactory]:
    factory = ClientFactory(ws.server)
    yield factory
    await factory.close_all()


def node_command(script: str, *args: str) -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (scripts/test.sh installs nodejs)")
    if not (JS_DIR / "node_modules" / "@xmpp" / "client").is_dir():
        pytest.fail(f"JavaScript dependencies missing: run `npm ci` in {JS_DIR}")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    major = int(version.lstrip("v").split(".")[0])
    # Node 22 has a global WebSocket; node 20 needs the flag.
    flags = ["--experimental-websocket"] if major < 22 else []
    return [node, *flags, str(JS_DIR / script), *args]


async def run_js(command: list[str]) -> tuple[int, list[dict[str, Any]], str]:
    """Run a JavaScript client to completion (killed, by its own pid, after JS_TIMEOUT);
    return its exit status, its JSON lines and its stderr."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=JS_DIR,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), JS_TIMEOUT + 10)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    events = []
    for line in out.decode(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            events.append({"event": "text", "text": line})
    return proc.returncode if proc.returncode is not None else -1, events, err.decode(errors="replace")


async def answer_one(bob: TestClient, from_bare: str) -> str:
    """Wait for a chat message from `from_bare` at `bob`, reply to its full JID; return the body."""
    got = await bob.messages.wait_for(
        lambda m: m["from"].bare == from_bare and m["body"],
        f"a message from {from_bare}",
        timeout=JS_TIMEOUT,
    )
    bob.send_message(mto=got["from"], mbody="pong: " + got["body"], mtype="chat")
    return str(got["body"])


async def chat_with_tcp_client(
    ws: WsServer, tcp_clients: ClientFactory, script: str, url: str, text: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run `script` as a new account chatting with a slixmpp client; return the JS client's
    reply event and all its events."""
    web = ws.server.new_account("web")
    bob = await tcp_clients.login(ws.server.new_account("bob"), presence=True)
    deadline_ms = str(int(JS_TIMEOUT * 1000))
    command = node_command(script, url, HOST, web.user, web.password, bob.boundjid.bare, text, deadline_ms)
    js = asyncio.create_task(run_js(command))
    try:
        body = await answer_one(bob, web.jid)
    except AssertionError:
        code, events, err = await js
        raise AssertionError(f"{script} exited {code}: {events}\nstderr: {err}") from None
    code, events, err = await js
    assert code == 0, f"{script} exited {code}: {events}\nstderr: {err}"
    assert body == text
    reply = next(e for e in events if e.get("event") == "reply")
    assert reply["body"] == "pong: " + text
    assert reply["from"] == bob.boundjid.full
    return reply, events


async def test_node_client_over_websocket_with_scram(ws: WsServer, tcp_clients: ClientFactory) -> None:
    text = "hello from node \N{BIRD}"
    _, events = await chat_with_tcp_client(ws, tcp_clients, "ws_chat.mjs", ws.scram_url, text)
    mechanism = next(e for e in events if e.get("event") == "mechanism")
    assert mechanism["mechanism"] == "SCRAM-SHA-1"
    assert "PLAIN" not in mechanism["offered"], "PLAIN offered over plain HTTP"
    online = next(e for e in events if e.get("event") == "online")
    assert online["jid"].endswith("/node")


async def test_browser_client_over_websocket(ws: WsServer, tcp_clients: ClientFactory) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} missing (scripts/test.sh installs Debian's chromium)")
    text = "hello from chromium"
    reply, _ = await chat_with_tcp_client(ws, tcp_clients, "browser_chat.mjs", ws.plain_url, text)
    assert reply["mechanism"] == "PLAIN"
    assert reply["jid"].endswith("/browser")
    assert "Chrome" in reply["userAgent"]
