"""Multi-user chat (XEP-0045) with slixmpp's xep_0045 plugin against mod_muc on
conference.localhost: joining (instant room creation), groupchat messages, history with
<delay/> on join, the owner's configuration form, and moderation (kick, ban)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from slixmpp import JID
from slixmpp.exceptions import PresenceError

from server_process import DEFAULT_EXTRA, Binaries, StarlingServer, unique_name
from xmpp_client import WAIT, ClientFactory, Inbox, TestClient

SERVICE = "conference.localhost"
# Appended after the `modules:` mapping of the rendered config: the indented first line
# continues that mapping, the rest is top-level YAML.
MUC_EXTRA = "  mod_muc: {history_size: 20}\n" + DEFAULT_EXTRA


@pytest.fixture(scope="module")
def muc_server(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StarlingServer]:
    srv = StarlingServer.start(tmp_path_factory.mktemp("starling-muc"), binaries, extra_config=MUC_EXTRA)
    yield srv
    srv.stop()


@pytest.fixture
async def muc_clients(muc_server: StarlingServer) -> AsyncIterator[ClientFactory]:
    factory = ClientFactory(muc_server)
    yield factory
    await factory.close_all()


async def muc_client(server: StarlingServer, factory: ClientFactory, prefix: str) -> TestClient:
    client = factory.new(server.new_account(prefix), plugins=("xep_0045", "xep_0004"))
    await client.login(server.starttls_port)
    return client


def room_jid(prefix: str) -> JID:
    return JID(f"{unique_name(prefix)}@{SERVICE}")


async def test_join_message_and_history(muc_server: StarlingServer, muc_clients: ClientFactory) -> None:
    room = room_jid("chat")
    alice = await muc_client(muc_server, muc_clients, "alice")
    bob = await muc_client(muc_server, muc_clients, "bob")
    muc_a = alice.plugin["xep_0045"]
    muc_b = bob.plugin["xep_0045"]

    # The first occupant creates the room (status 201) and owns it.
    presence, _subject, occupants, history = await muc_a.join_muc_wait(
        room, "alice", maxstanzas=0, timeout=WAIT
    )
    codes = {int(c) for c in presence["muc"]["status_codes"]}
    assert {110, 201} <= codes, codes
    assert presence["muc"]["affiliation"] == "owner"
    # slixmpp counts its own presence among the occupants.
    assert [p["from"].resource for p in occupants] == ["alice"]
    assert history == []

    await muc_b.join_muc_wait(room, "bob", maxstanzas=0, timeout=WAIT)
    assert set(muc_a.get_roster(room)) >= {"alice", "bob"}

    alice.send_message(mto=room, mbody="hello room", mtype="groupchat")
    msg = await bob.messages.wait_for(
        lambda m: m["type"] == "groupchat" and m["body"] == "hello room", "the groupchat message"
    )
    assert msg["from"] == JID(f"{room}/alice")

    # A third occupant gets the message as history, delayed, from the room.
    carol = await muc_client(muc_server, muc_clients, "carol")
    _presence, _subject, _occupants, history = await carol.plugin["xep_0045"].join_muc_wait(
        room, "carol", maxstanzas=10, timeout=WAIT
    )
    bodies = [m["body"] for m in history]
    assert bodies == ["hello room"], bodies
    assert history[0]["delay"]["from"] == room


async def test_configure_and_moderate(muc_server: StarlingServer, muc_clients: ClientFactory) -> None:
    room = room_jid("mod")
    owner = await muc_client(muc_server, muc_clients, "owner")
    guest = await muc_client(muc_server, muc_clients, "guest")
    muc_o = owner.plugin["xep_0045"]
    await muc_o.join_muc_wait(room, "owner", maxstanzas=0, timeout=WAIT)

    # The configuration form round-trips with a changed title.
    form = await muc_o.get_room_config(room, timeout=WAIT)
    assert "muc#roomconfig_roomname" in form.field
    form["type"] = "submit"
    form.field["muc#roomconfig_roomname"]["value"] = "Moderated room"
    await muc_o.set_room_config(room, form, timeout=WAIT)
    info = await owner.plugin["xep_0030"].get_info(jid=room, timeout=WAIT)
    names = [name for _cat, _typ, _lang, name in info["disco_info"]["identities"]]
    assert names == ["Moderated room"], names

    # Kick: the guest sees its own removal with status 307.
    # The plugin consumes MUC presence; its groupchat_presence event reports it.
    muc_presences = Inbox()
    guest.add_event_handler("groupchat_presence", muc_presences.push)
    await guest.plugin["xep_0045"].join_muc_wait(room, "guest", maxstanzas=0, timeout=WAIT)
    await muc_o.set_role(room, "guest", "none", reason="bye", timeout=WAIT)
    gone = await muc_presences.wait_for(
        lambda p: p["type"] == "unavailable" and p["from"] == JID(f"{room}/guest"), "kick presence"
    )
    assert 307 in {int(c) for c in gone["muc"]["status_codes"]}

    # Ban: joining again is refused with <forbidden/>.
    await muc_o.set_affiliation(room, "outcast", jid=guest.boundjid.bare, timeout=WAIT)
    with pytest.raises(PresenceError) as refused:
        await guest.plugin["xep_0045"].join_muc_wait(room, "guest", maxstanzas=0, timeout=WAIT)
    assert refused.value.condition == "forbidden"
    outcasts = await muc_o.get_affiliation_list(room, "outcast", timeout=WAIT)
    assert outcasts == [JID(guest.boundjid.bare)], outcasts
