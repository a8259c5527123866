// Sign-out that reaches everyone, in a real browser against the real
// oidc-provider: signing out at the IdP sends chatgate a back-channel logout
// token (oidc-provider's own), which ends chatgate's session and the bot's
// access; "Sign out everywhere" signs out at the IdP in a popup and the page
// hears back; the bot receives signed events and checks them with npm
// `standardwebhooks`.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { startWorld } from "./lib/world.mjs";
import { launch, signInByPopup } from "./lib/browser.mjs";
import { chatgateBinary, httpsRequest } from "./lib/chatgate.mjs";
import { startReceiver } from "./lib/receiver.mjs";

let world;
let receiver;
let botSecret;

function silentSignIn(page) {
  return page.evaluate(() => window.settle(ChatGate.signIn(window.chatgateOptions)));
}

async function signInWithPopup(page) {
  const result = await signInByPopup(page, world.idp.user);
  assert.ok(result.ok, JSON.stringify(result));
  return result.ok;
}

function botLookup(userId) {
  return httpsRequest("GET", `${world.chatgate.url}/v1/users/${encodeURIComponent(userId)}/token`, {
    ca: world.chatgate.ca,
    headers: { authorization: `Bearer ${botSecret}` },
  });
}

function eventsOf(type) {
  return receiver.events.filter((e) => e.event.type === type);
}

describe("sign-out that reaches everyone (oidc-provider)", () => {
  before(async () => {
    // The events secret, as an operator makes it.
    const secret = execFileSync(chatgateBinary(), ["keys", "generate", "events"]).toString().trim();
    assert.match(secret, /^whsec_/);
    receiver = await startReceiver({ secret });
    world = await startWorld({ events: { url: receiver.url, secret } });
    botSecret = world.chatgate.createBot("support");
  });

  after(async () => {
    await world?.stop();
    await receiver?.close();
    world = null;
  });

  it("signing out at the IdP ends chatgate's session and the bot's access, and the bot is told", async () => {
    const browser = await launch({ thirdPartyCookies: "allow" });
    try {
      const page = await browser.context.newPage();
      await page.goto(world.host.url);
      const user = await signInWithPopup(page);
      const again = await silentSignIn(page);
      assert.ok(again.ok, `silent sign-in works before the logout: ${JSON.stringify(again)}`);
      assert.equal((await botLookup(user.user.id)).status, 200);
      await receiver.waitFor(() => eventsOf("user.signed_in").length >= 1);
      const signedIn = eventsOf("user.signed_in")[0];
      assert.equal(signedIn.event.user_id, user.user.id);
      assert.equal(signedIn.event.app, "support");
      assert.equal(signedIn.id, signedIn.event.id);

      // The user signs out at the IdP itself (another tab); the IdP sends
      // chatgate a logout token on the back channel.
      const idpTab = await browser.context.newPage();
      await idpTab.goto(world.idp.endSessionUrl);
      await Promise.all([idpTab.waitForSelector("#signed-out"), idpTab.click("#logout-yes")]);
      assert.deepEqual(world.idp.backchannel.errors, []);
      assert.ok(world.idp.backchannel.sent >= 1, "oidc-provider sent a logout token and chatgate answered 200");

      // chatgate no longer stands in for the IdP, and the IdP session is gone.
      const after = await silentSignIn(page);
      assert.equal(after.err, "login_required", JSON.stringify(after));
      const lookup = await botLookup(user.user.id);
      assert.equal(lookup.status, 404, JSON.stringify(lookup.body));
      await receiver.waitFor(() => eventsOf("user.signed_out").length >= 1);
      const out = eventsOf("user.signed_out")[0].event;
      assert.equal(out.user_id, user.user.id);
      assert.deepEqual(out.data, { reason: "idp_logout" });
      assert.deepEqual(receiver.rejected, [], "every delivery verified with standardwebhooks");
      assert.ok(!JSON.stringify(receiver.events).includes("access_token"), "events carry no token");
    } finally {
      await browser.close();
    }
  });

  it("'Sign out everywhere' signs out at the IdP in a popup, and the page hears back", async () => {
    const browser = await launch({ thirdPartyCookies: "allow" });
    try {
      const page = await browser.context.newPage();
      await page.goto(world.host.url);
      const user = await signInWithPopup(page);
      const signedOutBefore = eventsOf("user.signed_out").length;

      const [popup] = await Promise.all([browser.context.waitForEvent("page"), page.click("#signout-everywhere")]);
      await popup.waitForSelector("#logout-yes");
      assert.ok(popup.url().startsWith(`${world.idp.issuer}/session/end`), popup.url());
      await Promise.all([popup.waitForEvent("close"), popup.click("#logout-yes")]);
      const result = await page.evaluate(() => window.signOutResult);
      assert.deepEqual(result.ok, { signed_out: true, revoked: true, idp_signed_out: true }, JSON.stringify(result));

      const after = await silentSignIn(page);
      assert.equal(after.err, "login_required", JSON.stringify(after));
      assert.equal((await botLookup(user.user.id)).status, 404);
      await receiver.waitFor(() => eventsOf("user.signed_out").length > signedOutBefore);
      assert.deepEqual(eventsOf("user.signed_out").at(-1).event.data, { reason: "widget" });
      assert.deepEqual(receiver.rejected, []);
    } finally {
      await browser.close();
    }
  });
});
