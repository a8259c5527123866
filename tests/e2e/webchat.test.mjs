// The real Bot Framework Web Chat (npm botframework-webchat, its own bundle)
// in Chromium, run as examples/webchat runs it (`startExample`, what
// `npm start` does): the user signs in through widget.js, chatgate hands the
// page a Direct Line token bound to the user, Web Chat talks to the local
// Direct Line stand-in, and the botbuilder bot answers with the user's name
// from the IdP's userinfo, called with the token chatgate gave it via /bf.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch } from "./lib/browser.mjs";
import { chatgateBinary } from "./lib/chatgate.mjs";

let example;
const browsers = [];

async function signedInPage(login) {
  const browser = await launch({ thirdPartyCookies: "allow" });
  browsers.push(browser);
  const page = await browser.context.newPage();
  await page.goto(example.host.url);
  // No IdP session yet: the silent sign-in fails and the page offers a button.
  await page.waitForSelector("#signin:not([hidden])", { timeout: 15000 });
  const [popup] = await Promise.all([page.context().waitForEvent("page"), page.click("#signin")]);
  // oidc-provider's development login, then its consent page.
  await popup.waitForSelector("input[name=login]", { timeout: 15000 });
  await popup.fill("input[name=login]", login);
  await popup.fill("input[name=password]", login);
  await Promise.all([popup.waitForNavigation().catch(() => {}), popup.click("button[type=submit]")]);
  if (!popup.isClosed()) {
    await popup.waitForSelector("button[type=submit]", { timeout: 15000 }).catch(() => {});
    if (!popup.isClosed()) await popup.click("button[type=submit]").catch(() => {});
  }
  await page.waitForFunction(() => /^Signed in as /.test(document.getElementById("status").textContent), null, { timeout: 15000 });
  await page.waitForSelector("[data-id=webchat-sendbox-input]", { timeout: 20000 });
  return page;
}

/** Types `text` into Web Chat's send box and waits for a bot answer matching `answer`. */
async function chat(page, text, answer) {
  await page.fill("[data-id=webchat-sendbox-input]", text);
  await page.press("[data-id=webchat-sendbox-input]", "Enter");
  return waitForText(page, answer);
}

async function waitForText(page, pattern) {
  const handle = await page.waitForFunction(
    (source) => {
      const re = new RegExp(source);
      const found = [...document.querySelectorAll("#webchat .webchat__bubble__content, #webchat .webchat__text-content")]
        .map((e) => e.textContent)
        .find((t) => re.test(t));
      return found || false;
    },
    pattern.source,
    { timeout: 20000 },
  ).catch(async (err) => {
    const conversations = [...example.directLine.conversations.values()].map((c) => c.activities.map((a) => `${a.from?.id}: ${a.text}`));
    throw new Error(`${err.message}: no ${pattern} in Web Chat.\nWeb Chat shows: ${await transcript(page)}\nDirect Line: ${JSON.stringify(conversations)} ${example.directLine.requests.join("; ")}\nbot: ${example.bot.logs.join("")}`);
  });
  return handle.jsonValue();
}

const transcript = (page) => page.evaluate(() => document.getElementById("webchat").textContent);

describe("Web Chat signed in through chatgate, with a Direct Line token bound to the user", () => {
  before(async () => {
    process.env.CHATGATE_BIN ??= chatgateBinary();
    const { startExample } = await import("../../examples/webchat/start.mjs");
    example = await startExample({ basePort: 0 });
  });

  after(async () => {
    for (const b of browsers) await b.close().catch(() => {});
    await example?.stop();
  });

  it("the bot answers in Web Chat with the user's name; each user sees only their own; a forged from.id gets nothing", async () => {
    const alice = await signedInPage("alice");
    // (Web Chat renders <alice@example.com> as a link.)
    const hello = await chat(alice, "hello", /Hi Alice\W+alice@example\.com/);
    assert.match(hello, /\(idp:alice; token valid until \d{4}-/, "chat token path: the sub of the verified chat token");

    // chatgate asked Direct Line for a token bound to Alice: with the
    // channel's secret, a dl_ user id, the app's origins as trusted origins.
    const generated = example.directLine.generated;
    assert.equal(generated.length, 1, JSON.stringify(generated));
    const [request] = generated;
    assert.equal(request.authorization, `Bearer ${example.directLineSecret}`);
    assert.match(request.body.user.id, /^dl_[A-Za-z0-9_-]{22}$/);
    assert.deepEqual(request.body.trustedOrigins, [example.host.url]);
    const aliceDl = request.body.user.id;
    // Web Chat runs on that token: its conversation is Alice's.
    const conversations = [...example.directLine.conversations.values()];
    assert.equal(conversations.length, 1);
    assert.equal(conversations[0].userId, aliceDl);
    assert.ok(conversations[0].activities.some((a) => a.from.id === aliceDl && a.text === "hello"));
    // The Direct Line secret never reaches the page or chatgate's log.
    const pageText = await alice.content();
    assert.ok(!pageText.includes(example.directLineSecret));
    assert.ok(!example.chatgate.logs.join("").includes(example.directLineSecret));

    // Bob, in another browser, sees only his own conversation.
    const bob = await signedInPage("bob");
    await chat(bob, "hello", /Hi Bob\W+bob@example\.com/);
    assert.doesNotMatch(await transcript(bob), /Alice/);
    assert.doesNotMatch(await transcript(alice), /Bob/);
    const bobDl = example.directLine.generated[1].body.user.id;
    assert.notEqual(bobDl, aliceDl);

    // Bob's page posts straight to Direct Line, without a chat token and
    // claiming to be Alice: Direct Line binds from.id to Bob's token, and
    // the bound id is what chatgate answers for (Bob's token, not Alice's).
    await bob.evaluate(
      (forged) =>
        new Promise((resolve, reject) =>
          window.directLine
            .postActivity({ type: "message", from: { id: forged, name: "Alice" }, text: "I am Alice" })
            .subscribe(resolve, reject),
        ),
      aliceDl,
    );
    const viaDirectLine = await waitForText(bob, /Direct Line user dl_/);
    assert.match(viaDirectLine, /Hi Bob\W+bob@example\.com/);
    assert.ok(viaDirectLine.includes(bobDl) && !viaDirectLine.includes(aliceDl), viaDirectLine);
    assert.doesNotMatch(await transcript(bob), /Hi Alice/);

    // An activity that reaches the bot with a from.id of the page's own
    // choosing (Alice's chatgate user id, or a made-up Direct Line id) and
    // no chat token gets no token.
    for (const [from, expected] of [
      ["alice", /Sign in to chat first/],
      ["dl_AAAAAAAAAAAAAAAAAAAAAA", /not signed in/],
    ]) {
      const replies = await askBot(from);
      assert.match(replies.join("\n"), expected, `from.id ${from}`);
    }
  });
});

/** Posts an activity to the bot directly (as a channel would) and returns its replies' texts. */
async function askBot(fromId) {
  const botUrl = example.bot.url;
  const r = await fetch(`${botUrl}/api/messages`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      type: "message",
      id: `forged-${Date.now()}`,
      timestamp: new Date().toISOString(),
      channelId: "directline",
      serviceUrl: "http://127.0.0.1:9/unused",
      from: { id: fromId },
      recipient: { id: "bot" },
      conversation: { id: "forged" },
      text: "hello",
      deliveryMode: "expectReplies",
    }),
  });
  assert.equal(r.status, 200);
  return (await r.json()).activities.map((a) => a.text);
}
