"""Presence subscriptions (RFC 6121 §3), presence broadcast (§4) and last activity
of an offline contact (XEP-0012 §4), between two slixmpp clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server_process import Account, StarlingServer
from xmpp_client import ClientFactory, TestClient

AVAILABLE = ("available", "chat", "away", "xa", "dnd")  # slixmpp folds <show/> into 'type'


def presence_from(jid: str, *types: str) -> Callable[[Any], bool]:
    """Predicate: a presence from bare `jid` (any resource) of one of `types`."""

    def pred(p: Any) -> bool:
        return p["from"].bare == jid and p["type"] in types

    return pred


def full_unavailable(full_jid: str) -> Callable[[Any], bool]:
    """Predicate: unavailable presence from exactly this full JID."""
    return lambda p: p["type"] == "unavailable" and p["from"].full == full_jid


async def subscribe_both(a: TestClient, b: TestClient) -> None:
    """The full handshake of RFC 6121 §3.1, both directions, answered by hand."""
    a_jid, b_jid = a.boundjid.bare, b.boundjid.bare

    a.send_presence(pto=b_jid, ptype="subscribe")
    await b.presences.wait_for(presence_from(a_jid, "subscribe"), f"subscribe from {a_jid} at {b_jid}")
    b.send_presence(pto=a_jid, ptype="subscribed")
    await a.presences.wait_for(presence_from(b_jid, "subscribed"), f"subscribed from {b_jid} at {a_jid}")

    b.send_presence(pto=a_jid, ptype="subscribe")
    await a.presences.wait_for(presence_from(b_jid, "subscribe"), f"subscribe from {b_jid} at {a_jid}")
    a.send_presence(pto=b_jid, ptype="subscribed")
    await b.presences.wait_for(presence_from(a_jid, "subscribed"), f"subscribed from {a_jid} at {b_jid}")


async def two_online(server: StarlingServer, clients: ClientFactory) -> tuple[TestClient, TestClient]:
    """Two fresh accounts, logged in, roster fetched, initial presence sent."""
    alice = await clients.login(server.new_account("alice"), presence=True)
    bob = await clients.login(server.new_account("bob"), presence=True)
    await alice.fetch_roster()
    await bob.fetch_roster()
    return alice, bob


async def test_subscription_handshake_ends_in_both(server: StarlingServer, clients: ClientFactory) -> None:
    alice, bob = await two_online(server, clients)
    a_jid, b_jid = alice.boundjid.bare, bob.boundjid.bare

    await subscribe_both(alice, bob)

    # §3.1.5/§3.1.6: approval makes each side's current presence flow to the other.
    await alice.presences.wait_for(presence_from(b_jid, *AVAILABLE), f"{b_jid} available at {a_jid}")
    await bob.presences.wait_for(presence_from(a_jid, *AVAILABLE), f"{a_jid} available at {b_jid}")

    a_item = (await alice.fetch_roster()).get(b_jid)
    b_item = (await bob.fetch_roster()).get(a_jid)
    assert a_item is not None and a_item["subscription"] == "both", a_item
    assert b_item is not None and b_item["subscription"] == "both", b_item
    # No outbound request is pending any more (§3.1.2 'ask').
    assert not a_item.get("ask") and not b_item.get("ask"), (a_item, b_item)


async def test_subscription_request_pushes_pending_item(
    server: StarlingServer, clients: ClientFactory
) -> None:
    # §3.1.2: sending a subscription request pushes the contact with ask='subscribe'.
    alice, bob = await two_online(server, clients)
    b_jid = bob.boundjid.bare
    alice.send_presence(pto=b_jid, ptype="subscribe")

    def pending(iq: Any) -> bool:
        items = {str(k): v for k, v in iq["roster"]["items"].items()}
        item = items.get(b_jid)
        return item is not None and item["subscription"] == "none" and item["ask"] == "subscribe"

    await alice.roster_pushes.wait_for(pending, "roster push with subscription='none' ask='subscribe'")


async def test_presence_broadcast_and_unavailable_on_disconnect(
    server: StarlingServer, clients: ClientFactory
) -> None:
    alice, bob = await two_online(server, clients)
    a_jid, b_jid = alice.boundjid.bare, bob.boundjid.bare
    await subscribe_both(alice, bob)
    await bob.presences.wait_for(presence_from(a_jid, *AVAILABLE), f"{a_jid} available at {b_jid}")
    await alice.presences.wait_for(presence_from(b_jid, *AVAILABLE), f"{b_jid} available at {a_jid}")

    # §4.4: a presence update is broadcast to subscribers.
    alice.send_presence(pshow="dnd", pstatus="in a meeting")
    update = await bob.presences.wait_for(presence_from(a_jid, "dnd"), "alice's dnd update at bob")
    assert update["status"] == "in a meeting"
    assert update["from"].full == alice.boundjid.full

    # §4.5.2: when alice's session ends, bob gets unavailable presence from her full JID.
    alice_full = alice.boundjid.full
    await alice.close()
    await bob.presences.wait_for(full_unavailable(alice_full), f"unavailable from {alice_full} at bob")
    bob.presences.items.clear()  # only presence sent from now on counts below

    # And the other way round: alice comes back, sees bob online (§4.2.2 probe
    # answered), then sees bob go offline.
    alice2 = await clients.login(account_of(alice), resource="back", presence=True)
    await alice2.presences.wait_for(presence_from(b_jid, *AVAILABLE), "bob available at alice's new session")
    await bob.presences.wait_for(presence_from(a_jid, *AVAILABLE), "alice's return at bob")
    bob_full = bob.boundjid.full
    await bob.close()
    await alice2.presences.wait_for(full_unavailable(bob_full), f"unavailable from {bob_full} at alice")


def account_of(client: TestClient) -> Account:
    """The account a client logged in with."""
    return Account(client.boundjid.user, client.boundjid.domain, client.password)


async def test_last_activity_of_offline_contact(server: StarlingServer, clients: ClientFactory) -> None:
    # XEP-0012 §4: a subscribed contact asking an offline user's bare JID gets
    # the seconds since that user's last logout and its last status.
    alice, bob = await two_online(server, clients)
    b_jid = bob.boundjid.bare
    await subscribe_both(alice, bob)
    bob.send_presence(ptype="unavailable", pstatus="gone fishing")
    await alice.presences.wait_for(presence_from(b_jid, "unavailable"), "bob unavailable at alice")
    await bob.close()

    res = await alice.plugin["xep_0012"].get_last_activity(b_jid, timeout=15)
    assert res["type"] == "result", res
    seconds = int(res["last_activity"]["seconds"])
    assert 0 <= seconds < 120, res
