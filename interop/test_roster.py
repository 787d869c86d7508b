"""Roster management (RFC 6121 §2) and roster versioning (§2.6) through slixmpp."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server_process import StarlingServer
from xmpp_client import WAIT, ClientFactory


def item_for(iq: Any, jid: str) -> dict[str, Any] | None:
    """The roster item for `jid` in a roster result or push, if any."""
    items = iq["roster"]["items"]
    return next((dict(v) for k, v in items.items() if str(k) == jid), None)


def is_push_for(jid: str, subscription: str | None = None) -> Callable[[Any], bool]:
    """Predicate: a roster push (§2.1.6) carrying an item for `jid`."""

    def pred(iq: Any) -> bool:
        item = item_for(iq, jid)
        return item is not None and (subscription is None or item["subscription"] == subscription)

    return pred


async def test_new_account_has_empty_roster(server: StarlingServer, clients: ClientFactory) -> None:
    client = await clients.login(server.new_account("empty"))
    assert await client.fetch_roster() == {}


async def test_roster_set_get_remove(server: StarlingServer, clients: ClientFactory) -> None:
    owner = server.new_account("owner")
    contact = f"contact-x@{server.host}"
    client = await clients.login(owner)
    # Requesting the roster makes this resource "interested" in pushes (§2.1.6).
    assert await client.fetch_roster() == {}

    # Add (§2.3): the server answers a result and pushes the item to the resource.
    await client.update_roster(contact, name="Contact X", groups=["Friends", "Work"], timeout=WAIT)
    push = await client.roster_pushes.wait_for(is_push_for(contact), "roster push for the added item")
    assert push["type"] == "set"

    roster = await client.fetch_roster()
    assert contact in roster, roster
    item = roster[contact]
    assert item["name"] == "Contact X"
    assert sorted(item["groups"]) == ["Friends", "Work"]
    # No presence subscription was asked for, so none exists (§2.1.2.5).
    assert item["subscription"] == "none"

    # Update (§2.4): same JID, new name and groups.
    await client.update_roster(contact, name="Renamed", groups=["Family"], timeout=WAIT)
    await client.roster_pushes.wait_for(is_push_for(contact), "roster push for the update")
    item = (await client.fetch_roster())[contact]
    assert item["name"] == "Renamed"
    assert item["groups"] == ["Family"]

    # Remove (§2.5): a push with subscription='remove', then the item is gone.
    await client.del_roster_item(contact)
    await client.roster_pushes.wait_for(is_push_for(contact, "remove"), "roster push for the removal")
    assert contact not in await client.fetch_roster()


async def test_roster_push_reaches_other_resources(server: StarlingServer, clients: ClientFactory) -> None:
    # §2.1.6: a roster change is pushed to every interested resource of the account.
    owner = server.new_account("pushes")
    first = await clients.login(owner, resource="first")
    second = await clients.login(owner, resource="second")
    await first.get_roster(timeout=WAIT)
    await second.get_roster(timeout=WAIT)
    contact = f"somebody@{server.host}"

    await first.update_roster(contact, name="Somebody", timeout=WAIT)
    push = await second.roster_pushes.wait_for(is_push_for(contact), "roster push on the other resource")
    item = item_for(push, contact)
    assert item is not None and item["name"] == "Somebody"


async def test_roster_versioning(server: StarlingServer, clients: ClientFactory) -> None:
    # §2.6: with versioning on, results carry 'ver'; a get with the current
    # version returns an empty result (or pushes), not the whole roster again.
    owner = server.new_account("rosterver")
    client = await clients.login(owner)
    assert any("rosterver" in names for names, _ in client.features_seen), client.features_seen

    await client.update_roster(f"a@{server.host}", name="A", timeout=WAIT)
    iq = client.make_iq_get(queryxmlns="jabber:iq:roster")
    # ver='' asks for the whole roster plus its version (§2.6.2); slixmpp drops
    # empty attributes, hence the raw set.
    iq["roster"].xml.set("ver", "")
    full = await client.send_iq(iq)
    ver = full["roster"]["ver"]
    assert ver, f"no roster version in {full}"
    assert f"a@{server.host}" in [str(j) for j in full["roster"]["items"]]

    again = client.make_iq_get(queryxmlns="jabber:iq:roster")
    again["roster"]["ver"] = ver
    res = await client.send_iq(again)
    assert res["type"] == "result"
    # §2.6.3 allows either an empty result or the complete roster with its version.
    if res["roster"]["items"]:
        assert res["roster"]["ver"] == ver, res
        assert item_for(res, f"a@{server.host}") is not None, res
