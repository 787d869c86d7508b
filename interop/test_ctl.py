"""starlingctl against a live server, seen from a slixmpp client: connected_users,
kick_session and stop (ejabberdctl names and exit codes)."""

from __future__ import annotations

import asyncio
import time

from server_process import StarlingServer
from xmpp_client import WAIT, ClientFactory, TestClient


async def test_connected_users_lists_session(server: StarlingServer, clients: ClientFactory) -> None:
    account = server.new_account("listed")
    client = await clients.login(account, resource="here")
    res = server.ctl("connected_users")
    assert res.returncode == 0, res
    assert f"{account.jid}/here" in res.stdout.split(), res.stdout
    await client.close()


async def test_kick_session_disconnects_client(server: StarlingServer, clients: ClientFactory) -> None:
    account = server.new_account("kicked")
    client = await clients.login(account, resource="victim")
    ended = asyncio.ensure_future(client.wait_until("disconnected", WAIT))
    await asyncio.sleep(0)  # let the waiter register before the kick
    res = await asyncio.to_thread(
        server.ctl, "kick_session", account.user, account.host, "victim", "interop test"
    )
    assert res.returncode == 0, res
    await ended
    listed = server.ctl("connected_users")
    assert f"{account.jid}/victim" not in listed.stdout.split(), listed.stdout


async def test_ctl_stop_ends_server(fresh_server: StarlingServer) -> None:
    account = fresh_server.new_account("stopper")
    client = TestClient(f"{account.jid}/s", account.password)
    await client.login(fresh_server.starttls_port)
    ended = asyncio.ensure_future(client.wait_until("disconnected", WAIT))
    await asyncio.sleep(0)
    res = await asyncio.to_thread(fresh_server.ctl, "stop")
    assert res.returncode == 0, res
    await ended  # sessions are closed (with <system-shutdown/>) before exit
    proc = fresh_server.proc
    assert proc is not None
    deadline = time.monotonic() + 15
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert proc.returncode == 0, f"starling exit code after stop: {proc.returncode}"
