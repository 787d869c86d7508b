"""In-band registration (XEP-0077) through slixmpp's xep_0077 plugin.

Covers §3.1 (registration form, account creation, <conflict/> for a taken
username) and §3.3 (password change while authenticated).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from slixmpp.exceptions import IqError

from server_process import Account, Binaries, StarlingServer, unique_name
from xmpp_client import WAIT, ClientFactory, LoginFailed


async def register_in_band(
    clients: ClientFactory, account: Account, *, expect_login: bool = True
) -> tuple[Any, Any]:
    """Run slixmpp's registration flow for `account`, then let it log in.

    Returns (form, outcome): the registration form the server sent, and the
    reply to our `<iq type='set'>` (a result Iq or the IqError). With
    `expect_login=False` the login that follows may fail (the account may not exist).
    """
    client = clients.new(account, plugins=("xep_0077",))
    # Registers even if the server forgets the stream feature; whether the feature
    # is advertised is checked separately.
    client.plugin["xep_0077"].force_registration = True
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[Any, Any]] = loop.create_future()

    async def on_register(form: Any) -> None:
        iq = client.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = account.user
        iq["register"]["password"] = account.password
        try:
            outcome: Any = await iq.send(timeout=WAIT)
        except IqError as err:
            outcome = err
        if not done.done():
            done.set_result((form, outcome))

    client.add_event_handler("register", on_register)
    try:
        await client.login(clients.server.starttls_port)
    except LoginFailed:
        if expect_login:
            raise
    form, outcome = await asyncio.wait_for(done, WAIT)
    return form, outcome


async def test_inband_registration_creates_account(server: StarlingServer, clients: ClientFactory) -> None:
    account = Account(unique_name("ibr"), server.host, "s3cret-ibr")
    form, outcome = await register_in_band(clients, account)

    assert form["type"] == "result"
    assert {"username", "password"} <= form["register"]["fields"], form
    assert not form["register"]["registered"]
    assert not isinstance(outcome, IqError), f"registration refused: {outcome}"
    assert outcome["type"] == "result"

    # The new account works from a fresh connection.
    other = await clients.login(account, resource="second")
    assert other.boundjid.bare == account.jid


async def test_register_stream_feature_advertised(server: StarlingServer, clients: ClientFactory) -> None:
    # XEP-0077 ("Stream Feature"): a server offering in-band registration
    # advertises <register xmlns='http://jabber.org/features/iq-register'/>.
    client = clients.new(server.new_account("feat"))
    await client.login(server.starttls_port)
    assert any("register" in names for names, _ in client.features_seen), client.features_seen


async def test_inband_registration_of_taken_name_conflicts(
    server: StarlingServer, clients: ClientFactory
) -> None:
    existing = server.new_account("taken")
    # Same username and password: the SASL step that follows still succeeds,
    # so only the registration reply differs.
    _form, outcome = await register_in_band(clients, existing)
    assert isinstance(outcome, IqError), f"expected <conflict/>, got {outcome}"
    assert outcome.iq["error"]["condition"] == "conflict", outcome.iq


async def test_inband_password_change(server: StarlingServer, clients: ClientFactory) -> None:
    account = server.new_account("chpw")
    client = clients.new(account, plugins=("xep_0077",))
    await client.login(server.starttls_port)
    await client.plugin["xep_0077"].change_password("n3w-password", jid=server.host, timeout=WAIT)
    await client.close()

    changed = Account(account.user, account.host, "n3w-password")
    again = await clients.login(changed, resource="after-change")
    assert again.boundjid.bare == account.jid


async def test_registration_rate_limited_per_address(
    binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # ejabberd's registration_timeout (default 600 s): after one successful in-band
    # registration, the same address gets <resource-constraint/> until it expires.
    srv = StarlingServer.start(tmp_path_factory.mktemp("ratelimit"), binaries, extra_config="")
    factory = ClientFactory(srv)
    try:
        _form, first = await register_in_band(factory, Account(unique_name("rl"), srv.host, "pw-rl-1"))
        assert not isinstance(first, IqError), f"first registration refused: {first}"
        _form, second = await register_in_band(
            factory, Account(unique_name("rl"), srv.host, "pw-rl-2"), expect_login=False
        )
        assert isinstance(second, IqError), f"second registration accepted: {second}"
        assert second.iq["error"]["condition"] == "resource-constraint", second.iq
        assert second.iq["error"]["type"] == "wait", second.iq
    finally:
        await factory.close_all()
        srv.stop()
