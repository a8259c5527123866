// Host-signed sign-in in a real browser: the host page's backend signs a
// short-lived token, the widget posts it, the chat token verifies against the
// JWKS; the same page on a site that is not allow-listed gets origin_not_allowed.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { createLocalJWKSet, jwtVerify } from "jose";
import { startWorld, CHAT_AUDIENCE } from "./lib/world.mjs";
import { launch } from "./lib/browser.mjs";

let world;

before(async () => {
  world = await startWorld();
});

after(async () => {
  await world?.stop();
});

function signInWithHostToken(page) {
  return page.evaluate(async () => {
    const token = await (await fetch("/host-token")).text();
    const first = await window.settle(ChatGate.signInWithHostToken({ ...window.chatgateOptions, token }));
    const replay = await window.settle(ChatGate.signInWithHostToken({ ...window.chatgateOptions, token }));
    return { first, replay };
  });
}

describe("host-signed userinfo tokens", () => {
  it("a token signed by the host backend signs the user in; a replay and a foreign site are refused", async () => {
    const browser = await launch({ thirdPartyCookies: "block" });
    try {
      const page = await browser.context.newPage();
      await page.goto(world.host.url);
      const { first, replay } = await signInWithHostToken(page);
      assert.ok(first.ok, JSON.stringify(first));
      assert.equal(first.ok.user.id, "host:support:customer-7");
      assert.equal(first.ok.user.name, "Harriet Host");
      const jwks = createLocalJWKSet(await world.chatgate.jwks());
      const { payload } = await jwtVerify(first.ok.chat_token, jwks, { issuer: world.chatgate.url, audience: CHAT_AUDIENCE });
      assert.equal(payload.sub, "host:support:customer-7");
      assert.equal(payload.app, "support");
      assert.equal(replay.err, "token_replayed");

      await page.goto(world.other.url);
      const foreign = await signInWithHostToken(page);
      assert.equal(foreign.first.err, "origin_not_allowed", JSON.stringify(foreign));
    } finally {
      await browser.close();
    }
  });
});
