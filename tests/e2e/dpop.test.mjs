// Chat tokens bound to the browser's key (bind_chat_tokens = "dpop"):
// headless Chromium with third-party cookies blocked, the real oidc-provider
// IdP, and chatgate. After one sign-in every cookie of the browser is
// cleared, and renewal still works, by the key in the host page's IndexedDB;
// a copy of the chat token in another browser, without that key, is refused.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { createLocalJWKSet, jwtVerify } from "jose";
import { startWorld, CHAT_AUDIENCE } from "./lib/world.mjs";
import { launch, signInByPopup, sendsThirdPartyCookies } from "./lib/browser.mjs";
import { httpsRequest } from "./lib/chatgate.mjs";

let world;

function silentSignIn(page) {
  return page.evaluate(() => window.settle(ChatGate.signIn(window.chatgateOptions)));
}

async function claimsOf(token) {
  const jwks = createLocalJWKSet(await world.chatgate.jwks());
  const { payload } = await jwtVerify(token, jwks, { issuer: world.chatgate.url, audience: CHAT_AUDIENCE });
  return payload;
}

/** What the page's IndexedDB holds for the app: the key's kind, never its bytes. */
function storedKey(page) {
  return page.evaluate(
    () =>
      new Promise((resolve) => {
        const open = indexedDB.open("chatgate", 1);
        open.onsuccess = () => {
          const store = open.result.transaction("keys", "readonly").objectStore("keys");
          const all = store.getAll();
          all.onsuccess = () =>
            resolve(
              all.result.map((pair) => ({
                algorithm: pair.privateKey.algorithm.name,
                curve: pair.privateKey.algorithm.namedCurve,
                extractable: pair.privateKey.extractable,
              })),
            );
        };
        open.onerror = () => resolve(null);
      }),
  );
}

describe("chat tokens bound to the browser's DPoP key", () => {
  before(async () => {
    world = await startWorld({ appToml: 'bind_chat_tokens = "dpop"' });
  });

  after(async () => {
    await world?.stop();
    world = null;
  });

  it("after one sign-in, renewal works with every cookie cleared; a copy of the token without the key is refused", async () => {
    const browser = await launch({ thirdPartyCookies: "block" });
    const thief = await launch({ thirdPartyCookies: "block" });
    try {
      const page = await browser.context.newPage();
      assert.equal(await sendsThirdPartyCookies(page, world.idp.probe, world.host.url), false, "third-party cookies are blocked");
      await page.goto(world.host.url);

      const signedIn = await signInByPopup(page, { ...world.idp.user, expectLogin: true, expectConsent: true });
      assert.ok(signedIn.ok, JSON.stringify(signedIn));
      const first = await claimsOf(signedIn.ok.chat_token);
      assert.match(first.cnf?.jkt ?? "", /^[A-Za-z0-9_-]{43}$/, "the token is bound to a key");
      const jkt = first.cnf.jkt;
      assert.deepEqual(await storedKey(page), [{ algorithm: "ECDSA", curve: "P-256", extractable: false }]);

      // Every cookie of the browser gone: chatgate's partitioned session and
      // the IdP's. A reload starts the widget afresh.
      await browser.context.clearCookies();
      assert.deepEqual(await browser.context.cookies(), []);
      await page.reload();
      const idpBefore = (await world.idp.stats()).authorizationRequests;
      const renewed = await silentSignIn(page);
      assert.ok(renewed.ok, JSON.stringify(renewed));
      assert.equal(renewed.ok.user.id, "oidc:alice");
      assert.equal(await page.evaluate(() => window.iframesOpened), 0, "renewed by one fetch");
      assert.equal((await world.idp.stats()).authorizationRequests, idpBefore, "no IdP round trip");
      const again = await claimsOf(renewed.ok.chat_token);
      assert.equal(again.cnf.jkt, jkt, "the same key");
      assert.deepEqual(await browser.context.cookies(), [], "and no cookie was needed or set");

      // The page proves the key to its own chat backend, which asks chatgate.
      const secret = world.chatgate.createBot("support");
      const htu = `${world.host.url}/api/messages`;
      const verify = (body) =>
        httpsRequest("POST", `${world.chatgate.url}/v1/chat-tokens/verify`, {
          ca: world.chatgate.ca,
          headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
          body,
        });
      const token = renewed.ok.chat_token;
      const proof = await page.evaluate((htu) => ChatGate.proof({ ...window.chatgateOptions, htm: "POST", htu }), htu);
      const ok = await verify({ token, proof, htm: "POST", htu });
      assert.equal(ok.status, 200, JSON.stringify(ok.body));
      assert.equal(ok.body.sub, "oidc:alice");
      assert.equal(ok.body.cnf.jkt, jkt);
      assert.equal((await verify({ token, proof, htm: "POST", htu })).body.error, "invalid_dpop_proof", "a proof works once");

      // The token copied into another browser: without the key, no proof
      // chatgate accepts; its own key proves nothing about this token.
      const otherPage = await thief.context.newPage();
      await otherPage.goto(world.host.url);
      const bare = await verify({ token });
      assert.equal(bare.status, 401);
      assert.equal(bare.body.error, "invalid_dpop_proof");
      const thiefProof = await otherPage.evaluate(
        ({ htu, token }) => ChatGate.proof({ ...window.chatgateOptions, htm: "POST", htu, token }),
        { htu, token },
      );
      const stolen = await verify({ token, proof: thiefProof, htm: "POST", htu });
      assert.equal(stolen.status, 401);
      assert.equal(stolen.body.error, "invalid_dpop_proof");
      assert.match(stolen.body.error_description, /another key/);
      // Nor can it renew: it has no binding and no IdP session.
      const theirs = await silentSignIn(otherPage);
      assert.equal(theirs.err, "login_required", JSON.stringify(theirs));

      // Sign-out forgets the binding and the key: with no cookie, the next
      // silent sign-in has nothing to renew from.
      const out = await page.evaluate(() => ChatGate.signOut(window.chatgateOptions));
      assert.equal(out.signed_out, true);
      assert.deepEqual(await storedKey(page), []);
      await browser.context.clearCookies();
      const after = await silentSignIn(page);
      assert.equal(after.err, "login_required", JSON.stringify(after));
    } finally {
      await Promise.all([browser.close(), thief.close()]);
    }
  });

  it("a sign-in with a login hint confirms the key too", async () => {
    const browser = await launch({ thirdPartyCookies: "block" });
    try {
      const page = await browser.context.newPage();
      await page.goto(world.host.url);
      await page.evaluate(() => {
        window.chatgateOptions.loginHint = "alice@example.com";
      });
      const signedIn = await signInByPopup(page, world.idp.user);
      assert.ok(signedIn.ok, JSON.stringify(signedIn));
      await browser.context.clearCookies();
      await page.reload();
      const renewed = await silentSignIn(page);
      assert.ok(renewed.ok, JSON.stringify(renewed));
      assert.equal(await page.evaluate(() => window.iframesOpened), 0, "renewed by the key, in one fetch");
    } finally {
      await browser.close();
    }
  });
});
