"""External components (XEP-0114) with slixmpp's ComponentXMPP against Starling.

A Starling server for `starling.test` with an `ejabberd_service` listener: the component
connects with the listener's password, receives what a user sends to
`component.starling.test` (and its JIDs), and its replies reach the user; a wrong password
is refused with a stream error and no session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import slixmpp

from server_process import DEFAULT_EXTRA, LOOPBACK, Binaries, StarlingServer, free_ports
from xmpp_client import WAIT, ClientFactory, Inbox

DOMAIN = "starling.test"
COMPONENT = f"component.{DOMAIN}"
SECRET = "component-secret"


@pytest.fixture(scope="module")
def component_server(
    binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StarlingServer]:
    (port,) = free_ports(1)
    srv = StarlingServer.start(
        tmp_path_factory.mktemp("starling-component"),
        binaries,
        host=DOMAIN,
        # A domain without a component goes to s2s; a closed port makes that fail at once.
        extra_config=DEFAULT_EXTRA + f's2s_static_routes: {{other.{DOMAIN}: "127.0.0.1:9"}}\n',
        listeners=f"  - {{port: {port}, ip: {LOOPBACK}, module: ejabberd_service, password: {SECRET}}}\n",
    )
    srv.component_port = port  # type: ignore[attr-defined]
    yield srv
    srv.stop()


class Component(slixmpp.ComponentXMPP):
    """A component that records messages and how its connection ended."""

    def __init__(self, jid: str, secret: str, port: int) -> None:
        super().__init__(jid, secret, LOOPBACK, port)
        self.messages = Inbox()
        self.add_event_handler("message", self.messages.push)

    async def start(self, timeout: float = WAIT) -> str:
        """Connect; returns the first of session_start / stream_error / disconnected."""
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[str] = loop.create_future()

        def settle(name: str) -> Callable[[Any], None]:
            def handler(data: Any) -> None:
                if not outcome.done():
                    outcome.set_result(f"{name}: {data}")

            return handler

        for ev in ("session_start", "stream_error", "disconnected", "connection_failed"):
            self.add_event_handler(ev, settle(ev))
        self.connect()
        return await asyncio.wait_for(outcome, timeout)

    async def close(self) -> None:
        self.cancel_connection_attempt()
        if self.transport is not None:
            try:
                await asyncio.wait_for(self.disconnect(wait=2.0), 5.0)
            except TimeoutError:
                self.abort()


@pytest.fixture
async def components() -> AsyncIterator[list[Component]]:
    made: list[Component] = []
    yield made
    for c in made:
        await c.close()


async def test_component_receives_and_replies(
    component_server: StarlingServer, components: list[Component]
) -> None:
    comp = Component(COMPONENT, SECRET, component_server.component_port)  # type: ignore[attr-defined]
    components.append(comp)
    outcome = await comp.start()
    assert outcome.startswith("session_start"), outcome

    factory = ClientFactory(component_server)
    try:
        account = component_server.new_account("u")
        user = await factory.login(account)
        user.send_message(mto=f"bot@{COMPONENT}", mbody="ping the bot", mtype="chat")
        got = await comp.messages.wait_for(lambda m: m["body"] == "ping the bot", "message at the component")
        assert got["from"].bare == account.jid
        assert got["to"].full == f"bot@{COMPONENT}"
        got.reply("pong from the bot").send()
        answer = await user.messages.wait_for(
            lambda m: m["body"] == "pong from the bot", "the component's reply"
        )
        assert answer["from"].bare == f"bot@{COMPONENT}"

        # The component's own domain is addressable too.
        user.send_message(mto=COMPONENT, mbody="to the domain")
        got = await comp.messages.wait_for(lambda m: m["body"] == "to the domain", "message to the domain")
        assert got["to"].full == COMPONENT
    finally:
        await factory.close_all()


async def test_wrong_password_is_refused(
    component_server: StarlingServer, components: list[Component]
) -> None:
    port = component_server.component_port  # type: ignore[attr-defined]
    comp = Component(f"other.{DOMAIN}", "not-the-secret", port)
    components.append(comp)
    outcome = await comp.start()
    assert not outcome.startswith("session_start"), outcome
    # Starling answers a bad handshake with <not-authorized/> (XEP-0114 §3), then closes.
    assert "not-authorized" in outcome or outcome.startswith("disconnected"), outcome
    # And the domain was not routed: a user's message to it bounces.
    factory = ClientFactory(component_server)
    try:
        user = await factory.login(component_server.new_account("u"))
        user.send_message(mto=f"x@other.{DOMAIN}", mbody="anyone?", mtype="chat")
        err = await user.messages.wait_for(lambda m: m["type"] == "error", "a bounce")
        # Not a component, so the s2s manager tries it and fails (a closed port).
        assert err["error"]["condition"] == "remote-server-not-found", err
    finally:
        await factory.close_all()
