// Browser end-to-end tests of the sign-in flow: headless Chromium, the real
// oidc-provider IdP, and chatgate, on three sites over HTTPS.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { createLocalJWKSet, jwtVerify } from "jose";
import { startWorld, CHAT_AUDIENCE, IDP_KINDS } from "./lib/world.mjs";
import { launch, signInByPopup, sendsThirdPartyCookies } from "./lib/browser.mjs";

let world;


async function withBrowser(thirdPartyCookies, fn) {
  const browser = await launch({ thirdPartyCookies });
  try {
    const page = await browser.context.newPage();
    return await fn(page, browser.context);
  } finally {
    await browser.close();
  }
}

function silentSignIn(page, extra = {}) {
  return page.evaluate((extra) => window.settle(ChatGate.signIn({ ...window.chatgateOptions, ...extra })), extra);
}

function popupSignIn(page, expect) {
  return signInByPopup(page, { ...world.idp.user, ...expect });
}

function signOut(page, revoke = false) {
  return page.evaluate((revoke) => ChatGate.signOut({ ...window.chatgateOptions, revoke }), revoke);
}

async function verifyChatToken(result) {
  const jwks = createLocalJWKSet(await world.chatgate.jwks());
  const { payload, protectedHeader } = await jwtVerify(result.chat_token, jwks, {
    issuer: world.chatgate.url,
    audience: CHAT_AUDIENCE,
  });
  return { payload, protectedHeader };
}

for (const kind of IDP_KINDS) describe(`sign-in through a real OpenID provider (${kind})`, () => {
  before(async () => {
    world = await startWorld({ idp: kind });
  });

  after(async () => {
    await world?.stop();
    world = null;
  });

  it("login_required falls back to a popup; then silent sign-in works through the IdP session and through chatgate's session", async () => {
    await withBrowser("allow", async (page) => {
      assert.equal(await sendsThirdPartyCookies(page, world.idp.probe, world.host.url), true, "third-party cookies are allowed in this profile");
      await page.goto(world.host.url);

      const first = await silentSignIn(page);
      assert.equal(first.err, "login_required", JSON.stringify(first));
      // the widget removed its iframe
      assert.equal(await page.locator("iframe").count(), 0);

      const popup = await popupSignIn(page, { expectLogin: true, expectConsent: true });
      assert.ok(popup.ok, JSON.stringify(popup));
      assert.equal(popup.ok.type, "chatgate:success");
      assert.equal(popup.ok.user.id, "oidc:alice");
      assert.equal(popup.ok.user.name, "Alice Example");
      assert.equal(popup.ok.session_ticket, undefined, "the ticket is consumed by the widget");

      // A standard JWT library verifies the chat token against chatgate's JWKS.
      const { payload, protectedHeader } = await verifyChatToken(popup.ok);
      assert.equal(payload.sub, "oidc:alice");
      assert.equal(payload.app, "support");
      assert.equal(payload.aud, CHAT_AUDIENCE);
      assert.equal(payload.exp, popup.ok.expires_at);
      assert.ok(payload.exp - payload.iat <= 15 * 60);
      assert.equal(protectedHeader.alg, "EdDSA");
      // This app does not bind chat tokens to a key: the widget keeps one
      // (to renew where cookies are dropped), the token is a bearer token.
      assert.equal(payload.cnf, undefined);
      assert.deepEqual(await page.evaluate(async () => (await indexedDB.databases()).map((d) => d.name)), ["chatgate"]);

      // Forget chatgate's session: the next silent sign-in must go to the IdP,
      // whose session cookie the iframe can send.
      assert.equal((await signOut(page)).signed_out, true);
      const before = (await world.idp.stats()).authorizationRequests;
      const pages = await world.chatgate.answered("GET", "/v1/callback", "200");
      const waited = await world.chatgate.answered("GET", "/v1/callback", "204");
      const viaIdp = await silentSignIn(page);
      assert.ok(viaIdp.ok, JSON.stringify(viaIdp));
      assert.equal(viaIdp.ok.user.id, "oidc:alice");
      assert.equal((await world.idp.stats()).authorizationRequests, before + 1, "one prompt=none round trip to the IdP");
      // The flow ended in the frame without a page of chatgate's: the
      // callback answered 204 and the widget's fetch took the outcome.
      // chatgate answers the frame just after the fetch (2 s at most).
      let frameAnswers = waited;
      for (const until = Date.now() + 3000; frameAnswers === waited && Date.now() < until; ) {
        await page.waitForTimeout(50);
        frameAnswers = await world.chatgate.answered("GET", "/v1/callback", "204");
      }
      assert.equal(frameAnswers, waited + 1, "the callback answered the frame 204");
      assert.equal(await world.chatgate.answered("GET", "/v1/callback", "200"), pages, "no result page loaded");

      // Silent renewal from chatgate's own session: no IdP round trip, and
      // no iframe either (one fetch of POST /v1/session/token).
      const iframes = await page.evaluate(() => window.iframesOpened);
      const renewed = await silentSignIn(page);
      assert.ok(renewed.ok, JSON.stringify(renewed));
      assert.notEqual(renewed.ok.chat_token, viaIdp.ok.chat_token);
      assert.equal((await world.idp.stats()).authorizationRequests, before + 1, "renewal did not touch the IdP");
      assert.equal(await page.evaluate(() => window.iframesOpened), iframes, "renewed by fetch, without an iframe");
      await verifyChatToken(renewed.ok);
    });
  });

  it("consent_required falls back to a popup that only asks for consent", async () => {
    await withBrowser("allow", async (page) => {
      await page.goto(world.host.url);
      assert.ok((await popupSignIn(page, { expectLogin: true })).ok);
      await world.idp.revokeConsents();
      await signOut(page);
      const silent = await silentSignIn(page);
      assert.equal(silent.err, "consent_required", JSON.stringify(silent));
      const popup = await popupSignIn(page, { expectLogin: false, expectConsent: true });
      assert.ok(popup.ok, JSON.stringify(popup));
      assert.equal(popup.ok.user.id, "oidc:alice");
    });
  });

  it("with third-party cookies blocked, the popup fallback works and chatgate's partitioned session keeps later sign-ins silent", async () => {
    await withBrowser("block", async (page) => {
      // Prove the browser really blocks third-party cookies.
      assert.equal(await sendsThirdPartyCookies(page, world.idp.probe, world.host.url), false, "third-party cookies are blocked in this profile");
      await page.goto(world.host.url);

      const popup = await popupSignIn(page, { expectLogin: true });
      assert.ok(popup.ok, JSON.stringify(popup));

      // Without chatgate's session the iframe reaches the IdP without its
      // cookies: the IdP cannot see the session it has.
      await signOut(page);
      const silent = await silentSignIn(page);
      assert.equal(silent.err, "login_required", JSON.stringify(silent));

      // The popup is first-party for the IdP: no login form this time.
      const again = await popupSignIn(page, { expectLogin: false });
      assert.ok(again.ok, JSON.stringify(again));

      // After a reload, silent sign-in works from chatgate's partitioned session.
      await page.reload();
      const before = (await world.idp.stats()).authorizationRequests;
      const renewed = await silentSignIn(page);
      assert.ok(renewed.ok, JSON.stringify(renewed));
      assert.equal(renewed.ok.user.id, "oidc:alice");
      assert.equal((await world.idp.stats()).authorizationRequests, before, "no IdP round trip");
      assert.equal(await page.evaluate(() => window.iframesOpened), 0, "renewed by fetch: the partitioned cookie travels with it");
      await verifyChatToken(renewed.ok);
    });
  });

  it("an origin that is not allow-listed gets nothing", async () => {
    await withBrowser("allow", async (page) => {
      const authorizeStatuses = [];
      page.on("response", (r) => {
        if (r.url().includes("/v1/authorize")) authorizeStatuses.push(`${r.request().method()} ${r.status()}`);
      });
      await page.goto(world.other.url);
      const refusedStarts = await world.chatgate.answered("POST", "/v1/authorize", "403");
      const messages = await page.evaluate(async () => {
        const seen = [];
        window.addEventListener("message", (e) => seen.push(e.data));
        const result = await window.settle(ChatGate.signIn({ ...window.chatgateOptions, timeoutMs: 5000 }));
        return { result, seen };
      });
      // chatgate's refusal cannot be framed by this origin and posts
      // nothing; the widget gives up once the frame loaded, not at timeoutMs.
      assert.equal(messages.result.err, "interaction_required", JSON.stringify(messages));
      assert.deepEqual(messages.seen, []);
      // The flow's start by fetch is refused (its answer unreadable to this
      // origin), and so is the frame's.
      assert.equal(await world.chatgate.answered("POST", "/v1/authorize", "403"), refusedStarts + 1);
      assert.deepEqual(authorizeStatuses.filter((s) => s.startsWith("GET")), ["GET 400"]);
    });
  });

  it("the widget ignores messages that are not from its own chatgate frame", async () => {
    await withBrowser("allow", async (page) => {
      await page.goto(world.host.url);
      assert.ok((await popupSignIn(page, {})).ok);
      // A login hint skips the renewal by fetch: these sign-ins use the iframe.
      const viaIframe = { loginHint: "alice@example.com" };
      const result = await page.evaluate(async (viaIframe) => {
        const pending = window.settle(ChatGate.signIn({ ...window.chatgateOptions, ...viaIframe }));
        // A forged success from the page itself (wrong origin, wrong source).
        window.postMessage({ type: "chatgate:success", app: "support", chat_token: "forged", expires_at: 0 }, "*");
        return pending;
      }, viaIframe);
      assert.ok(result.ok, JSON.stringify(result));
      assert.notEqual(result.ok.chat_token, "forged");
      // Two sign-ins at once: each gets the answer of its own iframe.
      const both = await page.evaluate((viaIframe) => {
        const opts = { ...window.chatgateOptions, ...viaIframe };
        return Promise.all([window.settle(ChatGate.signIn(opts)), window.settle(ChatGate.signIn(opts))]);
      }, viaIframe);
      assert.equal(await page.evaluate(() => window.iframesOpened), 3, "three sign-ins, three iframes");
      assert.ok(both[0].ok && both[1].ok, JSON.stringify(both));
      assert.notEqual(both[0].ok.chat_token, both[1].ok.chat_token);
    });
  });

  it("a blocked popup is reported as popup_blocked, and sign-out with revoke signs the user out at the IdP", async () => {
    await withBrowser("allow", async (page) => {
      await page.goto(world.host.url);
      const blocked = await page.evaluate(() => {
        window.open = () => null;
        return window.settle(ChatGate.signInWithPopup(window.chatgateOptions));
      });
      assert.equal(blocked.err, "popup_blocked");
      await page.reload();
      assert.ok((await popupSignIn(page, {})).ok);
      const revocations = (await world.idp.stats()).revocations;
      const out = await signOut(page, true);
      assert.deepEqual(out, { signed_out: true, revoked: true });
      assert.equal((await world.idp.stats()).revocations, revocations + 2, "refresh token, then access token");
    });
  });
});
