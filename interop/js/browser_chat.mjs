// Drives Debian's headless Chromium (playwright-core, no downloaded browser) to load
// browser/chat.html, which logs in over WebSocket with @xmpp/client's browser build and
// exchanges a message with a peer. The page is served by a small HTTP server started here
// on 127.0.0.1 (an ephemeral port), with a fresh Chromium profile in a temp directory.
//
// Usage: node browser_chat.mjs SERVICE DOMAIN USER PASSWORD PEER_BARE_JID TEXT [TIMEOUT_MS]
// Prints one JSON line: {"event":"reply",...} (exit 0) or {"event":"error",...} (exit 1).
// CHROMIUM overrides the browser path (default /usr/bin/chromium).

import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const [service, domain, user, password, peer, text, timeoutArg] = process.argv.slice(2);
if (!text) {
  console.error("usage: browser_chat.mjs SERVICE DOMAIN USER PASSWORD PEER TEXT [TIMEOUT_MS]");
  process.exit(64);
}
const timeoutMs = Number(timeoutArg ?? 30000);
const say = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));

// Only these two files are served: nothing else on disk is reachable.
const files = {
  "/chat.html": [join(here, "browser", "chat.html"), "text/html; charset=utf-8"],
  "/xmpp.min.js": [
    join(here, "node_modules", "@xmpp", "client", "dist", "xmpp.min.js"),
    "text/javascript; charset=utf-8",
  ],
};
const http = createServer(async (req, res) => {
  const entry = files[new URL(req.url, "http://x").pathname];
  if (!entry) {
    res.writeHead(404).end();
    return;
  }
  try {
    const body = await readFile(entry[0]);
    res.writeHead(200, { "content-type": entry[1] }).end(body);
  } catch {
    res.writeHead(500).end();
  }
});
await new Promise((resolve) => http.listen(0, "127.0.0.1", resolve));
const page_url = (() => {
  const params = new URLSearchParams({ service, domain, user, password, peer, text });
  return `http://127.0.0.1:${http.address().port}/chat.html#${params}`;
})();

const profile = await mkdtemp(join(tmpdir(), "starling-chromium-"));
let context;
let status = 1;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    timeout: timeoutMs,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const consoleLines = [];
  page.on("console", (msg) => consoleLines.push(msg.text()));
  page.on("pageerror", (err) => consoleLines.push(`pageerror: ${err.message}`));
  await page.goto(page_url, { timeout: timeoutMs });
  try {
    await page.waitForFunction(() => window.chatResult || window.chatError, null, {
      timeout: timeoutMs,
    });
  } catch {
    // Reported below with what the page logged.
  }
  const outcome = await page.evaluate(() => ({
    result: window.chatResult ?? null,
    error: window.chatError ?? null,
    log: document.getElementById("log")?.textContent ?? "",
  }));
  if (outcome.result) {
    say("reply", { ...outcome.result, userAgent: await page.evaluate(() => navigator.userAgent) });
    status = 0;
  } else {
    say("error", {
      error: outcome.error ?? `no reply within ${timeoutMs} ms`,
      page: outcome.log,
      console: consoleLines,
    });
  }
} catch (err) {
  say("error", { error: String(err?.message ?? err) });
} finally {
  await context?.close().catch(() => {});
  http.close();
  await rm(profile, { recursive: true, force: true }).catch(() => {});
}
process.exit(status);
