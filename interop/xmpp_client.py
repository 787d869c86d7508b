"""A slixmpp client tuned for tests against a local Starling server.

Owns: connecting to 127.0.0.1 on a chosen port over STARTTLS or direct TLS
(XEP-0368) with certificate checks off (the server generates a self-signed
certificate), forcing one SASL mechanism, recording every message, presence and
roster push it receives, and waiting for them with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any

import slixmpp
from slixmpp.exceptions import IqError
from slixmpp.stanza import Iq, StreamFeatures

from server_process import LOOPBACK, Account, StarlingServer

# Deadline for any single expected event: generous for a loaded 2-core CI machine,
# far below the per-test timeout so failures name what was awaited.
WAIT = 15.0


class LoginFailed(Exception):
    """The client did not reach session_start; the message says which event came instead."""


class Inbox:
    """Stanzas received by a client, with waits on a predicate."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def push(self, stanza: Any) -> None:
        self.items.append(stanza)
        self._changed.set()

    async def wait_for(self, pred: Callable[[Any], bool], what: str, timeout: float = WAIT) -> Any:
        """Return (and consume) the first stanza matching `pred`, waiting up to `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, item in enumerate(self.items):
                if pred(item):
                    del self.items[i]
                    return item
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = "\n".join(str(s) for s in self.items[-10:]) or "(nothing)"
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen:\n{seen}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


class TestClient(slixmpp.ClientXMPP):
    """A slixmpp ClientXMPP that records what it receives."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        jid: str,
        password: str,
        *,
        mech: str | None = None,
        plugins: tuple[str, ...] = (),
    ) -> None:
        super().__init__(jid, password, sasl_mech=mech)
        # The server's certificate is self-signed and generated at first start.
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.use_aiodns = False
        for name in ("xep_0030", "xep_0012", "xep_0092", "xep_0199", "xep_0202", *plugins):
            self.register_plugin(name)
        # xep_0199 keepalive is off by default, so no pings of ours mix with the tests'.
        # Subscription answers are part of what the tests check, so none are automatic:
        # None means "leave requests alone" (False would refuse them automatically).
        self.roster.auto_authorize = None  # type: ignore[assignment]
        self.roster.auto_subscribe = False
        self.messages = Inbox()
        self.presences = Inbox()
        self.roster_pushes = Inbox()
        self.add_event_handler("message", self.messages.push)
        self.add_event_handler("message_error", self.messages.push)
        self.add_event_handler("presence", self.presences.push)
        self.add_event_handler("roster_update", self._record_roster_push)
        # Snapshots of each <stream:features/>: (feature names, SASL mechanisms).
        self.features_seen: list[tuple[set[str], set[str]]] = []
        self.add_filter("in", self._record_features)

    def _record_features(self, stanza: Any) -> Any:
        if isinstance(stanza, StreamFeatures):
            names = set(stanza["features"])
            mechs = set(stanza["mechanisms"]) if "mechanisms" in names else set()
            self.features_seen.append((names, mechs))
        return stanza

    def _record_roster_push(self, iq: Iq) -> None:
        if iq["type"] == "set":
            self.roster_pushes.push(iq)

    # -- connection --------------------------------------------------------------------

    async def login(
        self, port: int, *, direct_tls: bool = False, timeout: float = WAIT, ip: str = LOOPBACK
    ) -> None:
        """Connect to `ip`:`port` (127.0.0.1) and wait until the session is bound.

        `direct_tls` selects XEP-0368 TLS-from-the-first-byte; otherwise STARTTLS.
        Raises LoginFailed naming the first failure event seen.
        """
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.enable_plaintext = False
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[str] = loop.create_future()

        def settle(name: str) -> Callable[[Any], None]:
            def handler(data: Any) -> None:
                if not outcome.done():
                    outcome.set_result(f"{name}: {data}")

            return handler

        failures = (
            "failed_auth",
            "failed_all_auth",
            "connection_failed",
            "disconnected",
            "stream_error",
            "session_end",
        )
        handlers = [(ev, settle(ev)) for ev in ("session_start", *failures)]
        for ev, h in handlers:
            self.add_event_handler(ev, h)
        try:
            self.connect(ip, port)
            try:
                result = await asyncio.wait_for(outcome, timeout)
            except TimeoutError:
                raise LoginFailed(f"no session_start within {timeout}s") from None
        finally:
            for ev, h in handlers:
                self.del_event_handler(ev, h)
        if not result.startswith("session_start"):
            self.cancel_connection_attempt()
            self.abort()
            raise LoginFailed(result)

    async def close(self) -> None:
        """Close the stream (waiting briefly for the server's close) and stop reconnects."""
        self.cancel_connection_attempt()
        if self.transport is not None:
            try:
                await asyncio.wait_for(self.disconnect(wait=2.0), 5.0)
            except TimeoutError:
                self.abort()

    # -- requests ----------------------------------------------------------------------

    async def fetch_roster(self) -> dict[str, dict[str, Any]]:
        """Roster get without a version, so the server returns every item (RFC 6121 §2.1.3)."""
        iq = self.make_iq_get(queryxmlns="jabber:iq:roster")
        res = await iq.send(timeout=WAIT)
        return {str(j): dict(item) for j, item in res["roster"]["items"].items()}

    async def send_iq(self, iq: Iq) -> Iq:
        """Send an IQ and return the result; IqError carries an error reply."""
        return await iq.send(timeout=WAIT)


async def expect_iq_error(client: TestClient, iq: Iq) -> Iq:
    """Send `iq` and return the error reply; fail if the server answered a result."""
    try:
        res = await client.send_iq(iq)
    except IqError as err:
        return err.iq
    raise AssertionError(f"expected an error reply, got a result: {res}")


class ClientFactory:
    """Creates logged-in clients and closes them all at teardown."""

    def __init__(self, server: StarlingServer) -> None:
        self.server = server
        self.clients: list[TestClient] = []

    def new(
        self,
        account: Account,
        *,
        resource: str = "interop",
        mech: str | None = None,
        password: str | None = None,
        plugins: tuple[str, ...] = (),
    ) -> TestClient:
        client = TestClient(
            f"{account.jid}/{resource}",
            account.password if password is None else password,
            mech=mech,
            plugins=plugins,
        )
        self.clients.append(client)
        return client

    async def login(
        self,
        account: Account,
        *,
        direct_tls: bool = False,
        mech: str | None = None,
        resource: str = "interop",
        presence: bool = False,
    ) -> TestClient:
        """A client for `account`, logged in; with `presence`, it also sent initial presence."""
        client = self.new(account, resource=resource, mech=mech)
        port = self.server.tls_port if direct_tls else self.server.starttls_port
        # Federation tests run servers on other loopback addresses (federation_servers.py).
        await client.login(port, direct_tls=direct_tls, ip=getattr(self.server, "ip", LOOPBACK))
        if presence:
            client.send_presence()
            # The server reflects initial presence to the sender (RFC 6121 §4.2.2); once
            # it is back, the session is available and routing to the bare JID reaches it.
            me = client.boundjid.full
            await client.presences.wait_for(
                lambda p: p["from"].full == me and p["type"] != "unavailable", f"own presence at {me}"
            )
        return client

    async def close_all(self) -> None:
        for client in self.clients:
            await client.close()
