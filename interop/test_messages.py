"""Message routing between two slixmpp clients (RFC 6121 §5, §8.5) and the
error replies for stanzas to accounts that do not exist or are offline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slixmpp.xmlstream import ET

from server_process import StarlingServer, unique_name
from xmpp_client import ClientFactory, expect_iq_error


def message_from(jid: str, mtype: str | None = None) -> Callable[[Any], bool]:
    def pred(m: Any) -> bool:
        return m["from"].bare == jid and (mtype is None or m["type"] == mtype)

    return pred


async def test_chat_both_ways(server: StarlingServer, clients: ClientFactory) -> None:
    alice = await clients.login(server.new_account("alice"), presence=True)
    bob = await clients.login(server.new_account("bob"), presence=True)
    a_jid, b_jid = alice.boundjid.bare, bob.boundjid.bare

    # To the bare JID: delivered to the available resource (§8.5.2.1.1).
    alice.send_message(mto=b_jid, mbody="hello bob \N{BIRD}", mtype="chat")
    got = await bob.messages.wait_for(message_from(a_jid, "chat"), "alice's message at bob")
    assert got["body"] == "hello bob \N{BIRD}"
    # The server stamps the sender's full JID (RFC 6120 §8.1.2.1).
    assert got["from"].full == alice.boundjid.full

    # The reply to the full JID it came from (§8.5.3.1).
    bob.send_message(mto=got["from"], mbody="hi alice", mtype="chat")
    back = await alice.messages.wait_for(message_from(b_jid, "chat"), "bob's reply at alice")
    assert back["body"] == "hi alice"
    assert back["from"].full == bob.boundjid.full


async def test_message_keeps_unknown_payload(server: StarlingServer, clients: ClientFactory) -> None:
    # Routed stanzas keep extension elements the server does not understand.
    alice = await clients.login(server.new_account("alice"), presence=True)
    bob = await clients.login(server.new_account("bob"), presence=True)
    msg = alice.make_message(mto=bob.boundjid.full, mbody="with payload", mtype="chat")
    msg.append(ET.fromstring("<x xmlns='urn:starling:interop'><y a='1'>z</y></x>"))
    msg.send()
    got = await bob.messages.wait_for(message_from(alice.boundjid.bare, "chat"), "message with payload")
    ext = got.xml.find("{urn:starling:interop}x")
    assert ext is not None, got
    y = ext.find("{urn:starling:interop}y")
    assert y is not None and y.get("a") == "1" and y.text == "z", got


async def test_message_to_nonexistent_user_bounces(server: StarlingServer, clients: ClientFactory) -> None:
    # RFC 6121 §8.5.1: no such account -> <service-unavailable/> (the server may
    # also drop silently; Starling, like ejabberd, answers).
    alice = await clients.login(server.new_account("alice"), presence=True)
    ghost = f"{unique_name('ghost')}@{server.host}"
    alice.send_message(mto=ghost, mbody="anyone there?", mtype="chat")
    err = await alice.messages.wait_for(message_from(ghost, "error"), f"error reply from {ghost}")
    assert err["error"]["condition"] == "service-unavailable", err
    assert err["error"]["type"] == "cancel", err


async def test_iq_to_nonexistent_user_is_service_unavailable(
    server: StarlingServer, clients: ClientFactory
) -> None:
    # RFC 6121 §8.5.1: for an IQ the server MUST answer <service-unavailable/>.
    alice = await clients.login(server.new_account("alice"))
    ghost = f"{unique_name('ghost')}@{server.host}"
    iq = alice.make_iq_get(queryxmlns="jabber:iq:version", ito=ghost)
    err = await expect_iq_error(alice, iq)
    assert err["error"]["condition"] == "service-unavailable", err


async def test_message_to_offline_user_without_offline_storage(
    server: StarlingServer, clients: ClientFactory
) -> None:
    # RFC 6121 §8.5.2.2.1: no available resource and no offline storage (mod_offline
    # is not configured here) -> <service-unavailable/>.
    alice = await clients.login(server.new_account("alice"), presence=True)
    offline = server.new_account("offline")
    alice.send_message(mto=offline.jid, mbody="are you there?", mtype="chat")
    err = await alice.messages.wait_for(message_from(offline.jid, "error"), "error reply for an offline user")
    assert err["error"]["condition"] == "service-unavailable", err


async def test_message_to_full_jid_of_gone_resource_goes_to_bare(
    server: StarlingServer, clients: ClientFactory
) -> None:
    # §8.5.3.2.1: a chat message to an unavailable full JID is treated as if sent
    # to the bare JID, so the other online resource gets it.
    alice = await clients.login(server.new_account("alice"), presence=True)
    bob_account = server.new_account("bob")
    bob = await clients.login(bob_account, resource="desk", presence=True)
    alice.send_message(mto=f"{bob_account.jid}/phone", mbody="to a gone resource", mtype="chat")
    got = await bob.messages.wait_for(
        message_from(alice.boundjid.bare, "chat"), "message at the other resource"
    )
    assert got["body"] == "to a gone resource"
