// A real BOSH client (strophe.js on node): logs in over XEP-0124/0206, sends initial presence,
// sends one chat message to a peer and waits for the peer's reply, then terminates the session.
//
// Usage: node bosh_client.mjs SERVICE DOMAIN USER PASSWORD PEER_BARE_JID TEXT [TIMEOUT_MS]
// Prints one JSON object per line on stdout: {"event":"online"|"reply"|"disconnected"|"error", ...}.
// Exit status: 0 once the reply arrived and the session ended, 1 on an error, 2 on timeout.
//
// Node has no XMLHttpRequest: xhr2 provides one. It has no `responseXML`, which strophe.js
// reads for BOSH responses, so the subclass below parses `responseText` with the DOMParser
// strophe.js's node entry point installs (@xmldom/xmldom).

import XHR2 from "xhr2";
import { Strophe, $msg, $pres } from "strophe.js";

class XMLHttpRequestWithXML extends XHR2 {
  get responseXML() {
    if (this.readyState !== 4 || !this.responseText) return null;
    return new DOMParser().parseFromString(this.responseText, "text/xml");
  }
}
globalThis.XMLHttpRequest = XMLHttpRequestWithXML;

const [service, domain, username, password, peer, text, timeoutArg] = process.argv.slice(2);
if (!text) {
  console.error("usage: bosh_client.mjs SERVICE DOMAIN USER PASSWORD PEER TEXT [TIMEOUT_MS]");
  process.exit(64);
}
const timeoutMs = Number(timeoutArg ?? 20000);
const say = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));

const timer = setTimeout(() => {
  say("error", { error: `no reply from ${peer} within ${timeoutMs} ms` });
  process.exit(2);
}, timeoutMs);

// Short long-polls keep the test quick; the server clamps `wait` to its max_wait anyway.
const conn = new Strophe.Connection(service, { keepalive: false });
conn.maxRetries = 0;
// strophe.js logs at debug level by default; keep stdout for the JSON events.
Strophe.setLogLevel(Strophe.LogLevel.FATAL);
if (process.env.BOSH_DEBUG) {
  conn.rawInput = (data) => console.error("IN ", data);
  conn.rawOutput = (data) => console.error("OUT", data);
}
let replied = false;

conn.addHandler(
  (stanza) => {
    const from = stanza.getAttribute("from") ?? "";
    if (Strophe.getBareJidFromJid(from) !== peer) return true;
    const body = stanza.getElementsByTagName("body")[0];
    if (!body) return true;
    replied = true;
    say("reply", { from, body: Strophe.getText(body) });
    conn.disconnect("done");
    return false;
  },
  null,
  "message",
);

const names = Object.fromEntries(Object.entries(Strophe.Status).map(([k, v]) => [v, k]));
conn.connect(
  `${username}@${domain}/strophe`,
  password,
  (status, condition) => {
    const name = names[status] ?? String(status);
    if (status === Strophe.Status.CONNECTED) {
      say("online", { jid: conn.jid, mechanism: conn._sasl_mechanism?.mechname ?? null });
      conn.send($pres());
      conn.send($msg({ to: peer, type: "chat" }).c("body").t(text));
    } else if (
      status === Strophe.Status.CONNFAIL ||
      status === Strophe.Status.AUTHFAIL ||
      status === Strophe.Status.ERROR
    ) {
      say("error", { error: `${name}: ${condition ?? ""}` });
      clearTimeout(timer);
      process.exit(1);
    } else if (status === Strophe.Status.DISCONNECTED) {
      say("disconnected", { condition: condition ?? null });
      clearTimeout(timer);
      process.exit(replied ? 0 : 1);
    }
  },
  2, // wait: seconds a request may be held
  1, // hold
);
