"""The modern-client modules through slixmpp's own plugins (issue 5): offline messages
(XEP-0160 with XEP-0203 delays), carbons (XEP-0280), the message archive (XEP-0313 with RSM
paging), vCard (XEP-0054), private XML storage (XEP-0049), blocking (XEP-0191) and client
state indication (XEP-0352), privacy lists (XEP-0016) and PEP avatars (XEP-0163/0084), each with its main flow and an
error case. Stream-management resumption after a dropped connection is covered by the Rust
integration tests (crates/server/tests/stream_mgmt.rs), which control the socket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from server_process import DEFAULT_EXTRA, Binaries, StarlingServer
from xmpp_client import ClientFactory, TestClient

MODULES = """\
  mod_offline: {max_user_offline_messages: 3}
  mod_carboncopy: {}
  mod_mam: {default: always}
  mod_vcard: {}
  mod_vcard_xupdate: {}
  mod_private: {}
  mod_blocking: {}
  mod_privacy: {}
  mod_client_state: {}
  mod_pep: {}
"""

PLUGINS = (
    "xep_0280",
    "xep_0313",
    "xep_0054",
    "xep_0049",
    "xep_0191",
    "xep_0352",
    "xep_0203",
    "xep_0084",
    "xep_0016",
)


@pytest.fixture(scope="module")
def server(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StarlingServer]:
    # Module lines first: the config template ends inside `modules:`.
    srv = StarlingServer.start(
        tmp_path_factory.mktemp("starling-modules"), binaries, extra_config=MODULES + DEFAULT_EXTRA
    )
    yield srv
    srv.stop()


async def login(
    clients: ClientFactory, server: StarlingServer, account: Any, resource: str = "r", presence: bool = True
) -> TestClient:
    client = clients.new(account, resource=resource, plugins=PLUGINS)
    await client.login(server.starttls_port)
    if presence:
        client.send_presence()
        me = client.boundjid.full
        await client.presences.wait_for(
            lambda p: p["from"].full == me and p["type"] != "unavailable", f"own presence at {me}"
        )
    return client


def body_from(jid: str, text: str | None = None) -> Any:
    def pred(m: Any) -> bool:
        return m["from"].bare == jid and m["body"] != "" and (text is None or m["body"] == text)

    return pred


async def test_offline_messages_arrive_with_delay_and_the_quota_bounces(
    server: StarlingServer, clients: ClientFactory
) -> None:
    alice = await login(clients, server, server.new_account("alice"))
    bob_account = server.new_account("bob")
    for i in range(3):
        alice.send_message(mto=bob_account.jid, mbody=f"while you were out {i}", mtype="chat")
    # Over max_user_offline_messages: <resource-constraint/> back to the sender.
    alice.send_message(mto=bob_account.jid, mbody="one too many", mtype="chat")
    err = await alice.messages.wait_for(lambda m: m["type"] == "error", "quota bounce")
    assert err["error"]["condition"] == "resource-constraint"

    bob = await login(clients, server, bob_account)
    for i in range(3):
        got = await bob.messages.wait_for(body_from(alice.boundjid.bare, f"while you were out {i}"), f"offline {i}")
        assert got["delay"]["stamp"] is not None, "XEP-0203 delay on offline delivery"


async def test_carbons_copy_to_the_other_resource(server: StarlingServer, clients: ClientFactory) -> None:
    account = server.new_account("carol")
    phone = await login(clients, server, account, "phone")
    laptop = await login(clients, server, account, "laptop")
    # slixmpp hands carbons to their own events rather than to "message".
    laptop.add_event_handler("carbon_received", laptop.messages.push)
    laptop.add_event_handler("carbon_sent", laptop.messages.push)
    await laptop.plugin["xep_0280"].enable()
    dave = await login(clients, server, server.new_account("dave"))

    # Received carbon: dave writes to the phone's full JID; the laptop gets a copy.
    dave.send_message(mto=phone.boundjid.full, mbody="to your phone", mtype="chat")
    await phone.messages.wait_for(body_from(dave.boundjid.bare, "to your phone"), "direct delivery")
    copy = await laptop.messages.wait_for(lambda m: m["carbon_received"]["body"] == "to your phone", "received carbon")
    assert copy["from"].bare == account.jid, "carbons come from the account's bare JID"

    # Sent carbon, and the private hint (XEP-0280 §7) suppresses it.
    phone.send_message(mto=dave.boundjid.bare, mbody="sent from phone", mtype="chat")
    await laptop.messages.wait_for(lambda m: m["carbon_sent"]["body"] == "sent from phone", "sent carbon")
    private = phone.make_message(mto=dave.boundjid.bare, mbody="private one", mtype="chat")
    private.append(ET.Element("{urn:xmpp:carbons:2}private"))
    private.send()
    await dave.messages.wait_for(body_from(account.jid, "private one"), "private message delivered")
    assert not any(m["carbon_sent"]["body"] == "private one" for m in laptop.messages.items)


async def test_archive_pages_with_rsm(server: StarlingServer, clients: ClientFactory) -> None:
    erin = await login(clients, server, server.new_account("erin"))
    frank = await login(clients, server, server.new_account("frank"))
    for i in range(5):
        erin.send_message(mto=frank.boundjid.bare, mbody=f"archived {i}", mtype="chat")
        await frank.messages.wait_for(body_from(erin.boundjid.bare, f"archived {i}"), f"message {i}")
    bodies = [
        m["mam_result"]["forwarded"]["stanza"]["body"]
        async for m in frank.plugin["xep_0313"].iterate(with_jid=erin.boundjid.bare, rsm={"max": 2})
    ]
    assert bodies == [f"archived {i}" for i in range(5)], "5 messages in order over 3 pages"
    # A query on someone else's archive is refused.
    with pytest.raises(IqError) as refused:
        await erin.plugin["xep_0313"].retrieve(jid=frank.boundjid.bare)
    assert refused.value.condition in ("forbidden", "not-allowed", "service-unavailable")


async def test_vcard_publish_and_fetch(server: StarlingServer, clients: ClientFactory) -> None:
    gina = await login(clients, server, server.new_account("gina"))
    hank = await login(clients, server, server.new_account("hank"))
    vcard = gina.plugin["xep_0054"].make_vcard()
    vcard["FN"] = "Gina Example"
    vcard["NICKNAME"] = "gigi"
    await gina.plugin["xep_0054"].publish_vcard(vcard)
    got = await hank.plugin["xep_0054"].get_vcard(gina.boundjid.bare, local=False)
    assert got["vcard_temp"]["FN"] == "Gina Example"
    # Setting another user's vCard is not allowed.
    iq = hank.make_iq_set(ito=gina.boundjid.bare)
    iq.append(vcard)
    with pytest.raises(IqError) as refused:
        await iq.send(timeout=15)
    assert refused.value.condition in ("forbidden", "not-allowed")


async def test_private_storage_round_trip(server: StarlingServer, clients: ClientFactory) -> None:
    ivy = await login(clients, server, server.new_account("ivy"))
    def private_query(client: TestClient, kind: str, inner: str, to: str | None = None) -> Any:
        iq = client.make_iq_set(ito=to) if kind == "set" else client.make_iq_get(ito=to)
        query = ET.Element("{jabber:iq:private}query")
        query.append(ET.fromstring(inner))
        iq.append(query)
        return iq

    await private_query(ivy, "set", "<prefs xmlns='urn:example:prefs'><colour>teal</colour></prefs>").send(
        timeout=15
    )
    res = await private_query(ivy, "get", "<prefs xmlns='urn:example:prefs'/>").send(timeout=15)
    assert "teal" in str(res)
    # Another user's private storage is off limits (XEP-0049 §3).
    jack = await login(clients, server, server.new_account("jack"))
    with pytest.raises(IqError) as refused:
        await private_query(jack, "get", "<prefs xmlns='urn:example:prefs'/>", to=ivy.boundjid.bare).send(
            timeout=15
        )
    assert refused.value.condition in ("forbidden", "not-allowed", "service-unavailable")


async def test_blocking_stops_messages_and_is_pushed(server: StarlingServer, clients: ClientFactory) -> None:
    kate = await login(clients, server, server.new_account("kate"))
    leo = await login(clients, server, server.new_account("leo"))
    await kate.plugin["xep_0191"].block(leo.boundjid.bare)
    assert leo.boundjid.bare in {str(j) for j in await kate.plugin["xep_0191"].get_blocked_jids()}
    leo.send_message(mto=kate.boundjid.bare, mbody="can you hear me", mtype="chat")
    err = await leo.messages.wait_for(lambda m: m["type"] == "error", "blocked bounce")
    assert err["error"]["condition"] == "service-unavailable"
    # Unblocking lets messages through again.
    await kate.plugin["xep_0191"].unblock(leo.boundjid.bare)
    leo.send_message(mto=kate.boundjid.bare, mbody="now?", mtype="chat")
    await kate.messages.wait_for(body_from(leo.boundjid.bare, "now?"), "message after unblock")
    # Blocking an invalid JID is a bad request.
    iq = kate.make_iq_set()
    iq.append(ET.fromstring("<block xmlns='urn:xmpp:blocking'><item jid='not a jid@@'/></block>"))
    with pytest.raises(IqError) as refused:
        await iq.send(timeout=15)
    assert refused.value.condition in ("jid-malformed", "bad-request")


async def test_inactive_clients_get_messages_at_once(server: StarlingServer, clients: ClientFactory) -> None:
    mia = await login(clients, server, server.new_account("mia"))
    ned = await login(clients, server, server.new_account("ned"))
    mia.plugin["xep_0352"].send_inactive()
    # A chat message with a body is urgent: it is not held back while inactive.
    ned.send_message(mto=mia.boundjid.full, mbody="urgent", mtype="chat")
    await mia.messages.wait_for(body_from(ned.boundjid.bare, "urgent"), "urgent message while inactive")
    mia.plugin["xep_0352"].send_active()
    # A CSI element on a client that is already active is accepted (no stream error): the
    # session keeps working.
    ned.send_message(mto=mia.boundjid.full, mbody="still here", mtype="chat")
    await mia.messages.wait_for(body_from(ned.boundjid.bare, "still here"), "message after active")


async def test_pep_avatar_publish_and_retrieve(server: StarlingServer, clients: ClientFactory) -> None:
    olga = await login(clients, server, server.new_account("olga"))
    image = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    avatars = olga.plugin["xep_0084"]
    await avatars.publish_avatar(image)
    item_id = avatars.generate_id(image)
    got = await avatars.retrieve_avatar(olga.boundjid.bare, item_id)
    assert item_id in str(got)
    # A node that was never published to is item-not-found (XEP-0060 §6.5.9.11).
    with pytest.raises(IqError) as missing:
        await olga.plugin["xep_0060"].get_item(olga.boundjid.bare, "urn:example:never", "x")
    assert missing.value.condition == "item-not-found"


async def test_privacy_list_blocks_messages_when_active(server: StarlingServer, clients: ClientFactory) -> None:
    pia = await login(clients, server, server.new_account("pia"))
    quinn = await login(clients, server, server.new_account("quinn"))
    # XEP-0016 §2.8: a list denying messages from quinn, then made active for this session.
    iq = pia.make_iq_set()
    iq.append(
        ET.fromstring(
            "<query xmlns='jabber:iq:privacy'><list name='quiet'>"
            f"<item type='jid' value='{quinn.boundjid.bare}' action='deny' order='1'><message/></item>"
            "<item action='allow' order='2'/></list></query>"
        )
    )
    await iq.send(timeout=15)
    await pia.plugin["xep_0016"].activate("quiet")
    quinn.send_message(mto=pia.boundjid.full, mbody="psst", mtype="chat")
    err = await quinn.messages.wait_for(lambda m: m["type"] == "error", "privacy bounce")
    assert err["error"]["condition"] == "service-unavailable"
    # Activating a list that does not exist is item-not-found (XEP-0016 §2.5).
    with pytest.raises(IqError) as missing:
        await pia.plugin["xep_0016"].activate("no-such-list")
    assert missing.value.condition == "item-not-found"
