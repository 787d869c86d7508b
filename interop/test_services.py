"""Queries a client sends to the server itself: service discovery (XEP-0030), ping
(XEP-0199), software version (XEP-0092), entity time (XEP-0202), last activity
(XEP-0012 §5) and the <service-unavailable/> answer to unknown namespaces
(RFC 6120 §8.4)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from slixmpp.xmlstream import ET

from server_process import StarlingServer
from xmpp_client import WAIT, ClientFactory, expect_iq_error

EXPECTED_FEATURES = {
    "http://jabber.org/protocol/disco#info",
    "urn:xmpp:ping",
    "jabber:iq:version",
    "urn:xmpp:time",
    "jabber:iq:last",
}


async def test_disco_info_lists_server_features(server: StarlingServer, clients: ClientFactory) -> None:
    client = await clients.login(server.new_account("disco"))
    res = await client.plugin["xep_0030"].get_info(jid=server.host, timeout=WAIT)
    info = res["disco_info"]
    features = set(info["features"])
    assert features >= EXPECTED_FEATURES, f"missing: {EXPECTED_FEATURES - features}"
    # XEP-0030 §3.1: at least one identity; a server is category 'server', type 'im'.
    identities = {(cat, typ) for cat, typ, _lang, _name in info["identities"]}
    assert ("server", "im") in identities, identities


async def test_disco_items_answers(server: StarlingServer, clients: ClientFactory) -> None:
    client = await clients.login(server.new_account("items"))
    res = await client.plugin["xep_0030"].get_items(jid=server.host, timeout=WAIT)
    assert res["type"] == "result"


async def test_ping_server(server: StarlingServer, clients: ClientFactory) -> None:
    client = await clients.login(server.new_account("ping"))
    res = await client.plugin["xep_0199"].send_ping(server.host, timeout=WAIT)
    assert res["type"] == "result"
    assert res["from"] == server.host


async def test_software_version(server: StarlingServer, clients: ClientFactory) -> None:
    client = await clients.login(server.new_account("version"))
    res = await client.plugin["xep_0092"].get_version(server.host, timeout=WAIT)
    version = res["software_version"]
    assert version["name"], res
    assert version["version"], res


async def test_entity_time(server: StarlingServer, clients: ClientFactory) -> None:
    client = await clients.login(server.new_account("time"))
    iq = client.make_iq_get(ito=server.host)
    iq.append(ET.fromstring("<time xmlns='urn:xmpp:time'/>"))
    res = await client.send_iq(iq)
    # Read the XML itself: XEP-0202 §3 fixes the formats (XEP-0082), and slixmpp's
    # own parser is stricter than the spec about them.
    utc_text = res.xml.findtext("{urn:xmpp:time}time/{urn:xmpp:time}utc")
    tzo_text = res.xml.findtext("{urn:xmpp:time}time/{urn:xmpp:time}tzo")
    assert utc_text and utc_text.endswith("Z"), res
    assert tzo_text and re.fullmatch(r"Z|[+-]\d\d:\d\d", tzo_text), res
    utc = datetime.fromisoformat(utc_text)
    skew = abs((datetime.now(UTC) - utc).total_seconds())
    assert skew < 60, f"server time off by {skew}s: {res}"


async def test_server_last_activity_is_uptime(server: StarlingServer, clients: ClientFactory) -> None:
    client = await clients.login(server.new_account("uptime"))
    res = await client.plugin["xep_0012"].get_last_activity(server.host, timeout=WAIT)
    seconds = int(res["last_activity"]["seconds"])
    assert 0 <= seconds < 3600, res


async def test_unknown_namespace_is_service_unavailable(
    server: StarlingServer, clients: ClientFactory
) -> None:
    client = await clients.login(server.new_account("unknown"))
    iq = client.make_iq_get(ito=server.host)
    iq.append(ET.fromstring("<query xmlns='urn:starling:interop:nonexistent'/>"))
    err = await expect_iq_error(client, iq)
    assert err["error"]["condition"] == "service-unavailable", err
    assert err["error"]["type"] == "cancel", err
    assert err["id"] == iq["id"]


async def test_unknown_namespace_to_own_account(server: StarlingServer, clients: ClientFactory) -> None:
    # RFC 6120 §10.5.3.3 / RFC 6121 §8.5.2: an IQ to the own bare JID is handled by
    # the server on the account's behalf; an unknown payload gets <service-unavailable/>.
    client = await clients.login(server.new_account("ownbare"))
    iq = client.make_iq_get(ito=client.boundjid.bare)
    iq.append(ET.fromstring("<query xmlns='urn:starling:interop:nonexistent'/>"))
    err = await expect_iq_error(client, iq)
    assert err["error"]["condition"] == "service-unavailable", err


async def test_iq_set_without_payload_is_bad_request(server: StarlingServer, clients: ClientFactory) -> None:
    # RFC 6120 §8.2.3: an IQ get/set has exactly one child; none is a <bad-request/>.
    client = await clients.login(server.new_account("empty"))
    iq = client.make_iq_set(ito=server.host)
    err = await expect_iq_error(client, iq)
    assert err["error"]["condition"] == "bad-request", err
    assert err["error"]["type"] == "modify", err
