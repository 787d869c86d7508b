// A real XMPP client (@xmpp/client on node) over WebSocket: logs in, sends initial presence,
// sends one chat message to a peer and waits for the peer's reply.
//
// Usage: node ws_chat.mjs SERVICE DOMAIN USER PASSWORD PEER_BARE_JID TEXT [TIMEOUT_MS]
// Prints one JSON object per line on stdout: {"event":"mechanism"|"online"|"reply"|"error", ...}.
// Exit status: 0 once the reply arrived and the stream closed, 1 on an error, 2 on timeout.
// Node 20 needs --experimental-websocket (the client uses the global WebSocket).

import { client, xml } from "@xmpp/client";

const [service, domain, username, password, peer, text, timeoutArg] = process.argv.slice(2);
if (!text) {
  console.error("usage: ws_chat.mjs SERVICE DOMAIN USER PASSWORD PEER TEXT [TIMEOUT_MS]");
  process.exit(64);
}
if (typeof globalThis.WebSocket !== "function") {
  console.error("no global WebSocket: run node with --experimental-websocket (node 20)");
  process.exit(64);
}
const timeoutMs = Number(timeoutArg ?? 20000);
const say = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));

const xmpp = client({
  service,
  domain,
  resource: "node",
  // Prefer SCRAM-SHA-1 whenever the server offers it, and report the choice, so the test
  // knows which mechanism went over the wire.
  credentials: async (authenticate, mechanisms) => {
    const mechanism = mechanisms.includes("SCRAM-SHA-1") ? "SCRAM-SHA-1" : mechanisms[0];
    say("mechanism", { mechanism, offered: mechanisms });
    await authenticate({ username, password }, mechanism);
  },
});
// One attempt only: a test must see the first failure, not a retry loop.
xmpp.reconnect.stop();

const timer = setTimeout(() => {
  say("error", { error: `no reply from ${peer} within ${timeoutMs} ms` });
  process.exit(2);
}, timeoutMs);

let done = false;
xmpp.on("error", (err) => {
  if (done) return;
  say("error", { error: String(err?.condition ?? err?.message ?? err) });
  process.exit(1);
});

xmpp.on("stanza", async (stanza) => {
  if (!stanza.is("message")) return;
  const from = stanza.attrs.from ?? "";
  if (from.split("/")[0] !== peer) return;
  const body = stanza.getChildText("body");
  if (body === null) return;
  done = true;
  say("reply", { from, body });
  clearTimeout(timer);
  await xmpp.stop();
  process.exit(0);
});

xmpp.on("online", async (address) => {
  say("online", { jid: address.toString() });
  await xmpp.send(xml("presence"));
  await xmpp.send(xml("message", { to: peer, type: "chat" }, xml("body", {}, text)));
});

try {
  await xmpp.start();
} catch (err) {
  say("error", { error: String(err?.condition ?? err?.message ?? err) });
  process.exit(1);
}
