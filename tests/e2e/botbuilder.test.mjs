// A Bot Framework bot written with botbuilder (examples/botbuilder/bot.mjs,
// unmodified) gets a signed-in user's access token from chatgate through the
// standard UserTokenClient calls, and uses it at the real IdP; then signs the
// user out with signOutUser. Activities are posted to the bot's /api/messages
// as a channel would, with authentication disabled (as the Bot Framework
// Emulator does) and replies collected with deliveryMode "expectReplies".
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { startWorld, CHAT_AUDIENCE } from "./lib/world.mjs";
import { launch, signInByPopup } from "./lib/browser.mjs";
import { httpsRequest } from "./lib/chatgate.mjs";
import { freePort } from "./lib/ports.mjs";

const HERE = fileURLToPath(new URL(".", import.meta.url));
const EXAMPLE = resolve(HERE, "../../examples/botbuilder/bot.mjs");

let world;
let bot;

async function startBot(env) {
  // A copy beside this file, so `botbuilder` and `jose` resolve to tests/e2e/node_modules.
  const dir = mkdtempSync(join(HERE, ".botbuilder-run-"));
  copyFileSync(EXAMPLE, join(dir, "bot.mjs"));
  const port = await freePort("127.0.0.1");
  const output = [];
  const child = spawn(process.execPath, [join(dir, "bot.mjs")], {
    env: { ...process.env, ...env, PORT: String(port) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout.on("data", (d) => output.push(d.toString()));
  child.stderr.on("data", (d) => output.push(d.toString()));
  const deadline = Date.now() + 20000;
  while (!output.join("").includes("bot listening")) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the bot did not start:\n${output.join("")}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  let n = 0;
  return {
    output,
    /** Posts a message activity; resolves with the texts of the bot's replies. */
    async say(text, chatToken) {
      n += 1;
      const activity = {
        type: "message",
        id: `activity-${n}`,
        timestamp: new Date().toISOString(),
        channelId: "webchat",
        serviceUrl: "http://127.0.0.1:9/unused",
        from: { id: "dl_web_user", name: "web user" },
        recipient: { id: "bot", name: "bot" },
        conversation: { id: "conversation-1" },
        text,
        channelData: chatToken ? { chatToken } : {},
        deliveryMode: "expectReplies",
      };
      const r = await fetch(`http://127.0.0.1:${port}/api/messages`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(activity),
      }).catch((err) => {
        throw new Error(`the bot did not answer (${err.cause?.message || err.message}):\n${output.join("")}`);
      });
      const body = await r.text();
      assert.equal(r.status, 200, `${body}\n${output.join("")}`);
      return JSON.parse(body).activities.map((a) => a.text);
    },
    stop() {
      child.kill("SIGTERM");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

describe("a botbuilder bot gets the user's token from chatgate (oidc-provider)", () => {
  before(async () => {
    world = await startWorld();
  });

  after(async () => {
    bot?.stop();
    await world?.stop();
    world = null;
  });

  it("getUserToken returns the user's real access token; signOutUser ends it", async () => {
    const browser = await launch({ thirdPartyCookies: "allow" });
    let signedIn;
    try {
      const page = await browser.context.newPage();
      await page.goto(world.host.url);
      signedIn = (await signInByPopup(page, world.idp.user)).ok;
      assert.ok(signedIn, "signed in");
    } finally {
      await browser.close();
    }
    const meta = await httpsRequest("GET", `${world.idp.issuer}/.well-known/openid-configuration`, { ca: world.chatgate.ca });
    const botSecret = world.chatgate.createBot("support");
    bot = await startBot({
      CHATGATE_URL: world.chatgate.url,
      CHATGATE_BOT_SECRET: botSecret,
      CHATGATE_APP: "support",
      CHAT_AUDIENCE,
      USERINFO_URL: meta.body.userinfo_endpoint,
      // The test CA, for chatgate and the IdP.
      NODE_EXTRA_CA_CERTS: world.ca.certFile,
    });

    const [hello] = await bot.say("hello", signedIn.chat_token);
    // The name and email come from the IdP's userinfo, called with the token.
    assert.match(hello, /^Hi Alice Example <alice@example\.com>! \(oidc:alice; token valid until \d{4}-\d\d-\d\dT/, hello);

    const [noToken] = await bot.say("hello");
    assert.match(noToken, /Sign in to chat first/);
    const [forged] = await bot.say("hello", signedIn.chat_token.slice(0, -4) + "AAAA");
    assert.match(forged, /does not verify/);

    // What a bot wired the obvious way asks (the page-chosen from.id, no
    // proof) gets nothing; with the user's chat token as the magic code it
    // gets the token.
    const getToken = (code) =>
      httpsRequest(
        "GET",
        `${world.chatgate.url}/bf/api/usertoken/GetToken?userId=${encodeURIComponent(signedIn.user.id)}&connectionName=support&channelId=webchat${code ? `&code=${code}` : ""}`,
        { ca: world.chatgate.ca, headers: { authorization: `Bearer ${botSecret}` } },
      );
    const bare = await getToken();
    assert.equal(bare.status, 403, JSON.stringify(bare.body));
    assert.equal(bare.body.error.code, "Forbidden");
    assert.equal((await getToken(signedIn.chat_token)).status, 200);

    const [out] = await bot.say("sign out", signedIn.chat_token);
    assert.equal(out, "Signed out: chatgate revoked your tokens.");
    const [after] = await bot.say("hello", signedIn.chat_token);
    assert.equal(after, "You are not signed in (chatgate holds no token for you).");
    assert.ok((await world.idp.stats()).revocations >= 1, "revoked at the IdP");
  });
});
