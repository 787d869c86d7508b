"""Logging in: every SASL mechanism over STARTTLS and over direct TLS (XEP-0368).

Covers RFC 6120 §5 (STARTTLS), §6 (SASL), §7 (bind), RFC 5802/7677 (SCRAM),
RFC 4616 (PLAIN, only over TLS) and the failure path (§6.5.10 <not-authorized/>).

Channel-bound SCRAM-*-PLUS cannot be exercised from Python: its ssl module offers
only tls-unique, which TLS 1.3 forbids, and not tls-exporter (RFC 9266). So the
-PLUS variants are checked for being *offered* on TLS 1.3, and slixmpp, when it
negotiates on its own, falls back to the plain SCRAM variant.
"""

from __future__ import annotations

import pytest

from server_process import Account, StarlingServer
from xmpp_client import ClientFactory, LoginFailed

MECHANISMS = ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]
TRANSPORTS = {"starttls": False, "direct_tls": True}


@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize("mech", MECHANISMS)
async def test_login_with_mechanism(
    server: StarlingServer, clients: ClientFactory, mech: str, transport: str
) -> None:
    account = server.new_account("auth")
    client = await clients.login(account, direct_tls=TRANSPORTS[transport], mech=mech)

    used = client.plugin["feature_mechanisms"].mech
    assert used is not None and used.name == mech
    assert client.boundjid.bare == account.jid
    assert client.boundjid.resource == "interop"
    # The stream was encrypted before authentication.
    assert client.socket is not None and client.socket.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_login_with_default_negotiation(
    server: StarlingServer, clients: ClientFactory, transport: str
) -> None:
    # No forced mechanism: slixmpp picks the strongest one it can do with this server.
    account = server.new_account("auto")
    client = await clients.login(account, direct_tls=TRANSPORTS[transport])
    assert client.plugin["feature_mechanisms"].mech.name.startswith("SCRAM-SHA-")


@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_mechanisms_offered_after_tls(
    server: StarlingServer, clients: ClientFactory, transport: str
) -> None:
    account = server.new_account("mechs")
    client = await clients.login(account, direct_tls=TRANSPORTS[transport])
    offered = set().union(*(mechs for _, mechs in client.features_seen))
    assert {"SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"} <= offered, offered
    if client.socket.version() == "TLSv1.3":
        # tls-exporter channel binding is available on TLS 1.3 (RFC 9266).
        plus = {"SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-512-PLUS"}
        assert plus <= offered, offered


async def test_starttls_required_before_sasl(server: StarlingServer, clients: ClientFactory) -> None:
    # With starttls_required, the first features offer STARTTLS (marked required)
    # and no SASL mechanism, so no credentials can cross in the clear (RFC 6120 §5.3.1).
    account = server.new_account("tlsreq")
    client = await clients.login(account)
    first_names, first_mechs = client.features_seen[0]
    assert "starttls" in first_names
    assert not first_mechs, f"SASL offered before TLS: {first_mechs}"


@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "PLAIN"])
async def test_wrong_password_fails(
    server: StarlingServer, clients: ClientFactory, mech: str, transport: str
) -> None:
    account = server.new_account("wrongpw")
    client = clients.new(account, mech=mech, password="not-" + account.password)
    port = server.tls_port if TRANSPORTS[transport] else server.starttls_port
    with pytest.raises(LoginFailed, match="failed_auth") as err:
        await client.login(port, direct_tls=TRANSPORTS[transport])
    assert "not-authorized" in str(err.value)


async def test_unknown_user_fails(server: StarlingServer, clients: ClientFactory) -> None:
    ghost = Account("nobody-here", server.host, "whatever")
    client = clients.new(ghost, mech="SCRAM-SHA-1")
    with pytest.raises(LoginFailed, match="failed_auth"):
        await client.login(server.starttls_port)


async def test_two_resources_of_one_account(server: StarlingServer, clients: ClientFactory) -> None:
    account = server.new_account("tworesources")
    first = await clients.login(account, resource="one")
    second = await clients.login(account, resource="two", direct_tls=True)
    assert first.boundjid.full == f"{account.jid}/one"
    assert second.boundjid.full == f"{account.jid}/two"
