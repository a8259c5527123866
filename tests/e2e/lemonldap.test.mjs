// LemonLDAP::NG 2.16 (Debian's package, OpenID certified) as the second real
// identity provider, beside npm oidc-provider: in headless Chromium, with the
// host page, chatgate and LemonLDAP::NG on three sites over HTTPS, and a
// second host page on LemonLDAP::NG's own site.
//
// What real IdPs do differently, each met here: an issuer with a trailing
// slash, prompt=none answered with a login page, no revocation endpoint,
// front-channel logout only, a dead refresh token answered
// 400 invalid_request, refresh tokens that do not rotate.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeCa } from "./lib/certs.mjs";
import { freePort } from "./lib/ports.mjs";
import { startChatgate, chatgateBinary, httpsRequest } from "./lib/chatgate.mjs";
import { startHost } from "./lib/host.mjs";
import { launch } from "./lib/browser.mjs";
import { startLlng, llngMissing, LLNG_USER } from "./lib/llng.mjs";

const CLIENT = { id: "chatgate-e2e", secret: "e2e-llng-client-secret-not-a-real-one" };
const CHAT_AUDIENCE = "https://bot.example.com";
const USER_ID = "oidc:dwho";
const REQUIRE = process.env.CHATGATE_TEST_REQUIRE_LLNG === "1";
const missing = llngMissing();

let world;

async function startLlngWorld() {
  const dir = mkdtempSync(join(tmpdir(), "chatgate-e2e-llng-"));
  const ca = makeCa(dir);
  const [hostPort, brokerPort, llngPort, sameSitePort] = await Promise.all([
    freePort("127.0.0.1"),
    freePort("127.0.0.1"),
    freePort("127.0.0.4"),
    freePort("127.0.0.4"),
  ]);
  const broker = `https://127.0.0.1:${brokerPort}`;
  const llngTls = ca.leaf("127.0.0.4");
  const llng = await startLlng({
    host: "127.0.0.4",
    port: llngPort,
    tls: llngTls,
    ca: ca.pem,
    client: {
      ...CLIENT,
      redirectUri: `${broker}/v1/callback`,
      frontchannelLogoutUri: `${broker}/v1/frontchannel-logout`,
      postLogoutRedirectUri: `${broker}/v1/signed-out`,
    },
  });
  const hostOrigin = `https://localhost:${hostPort}`;
  const sameSiteOrigin = `https://127.0.0.4:${sameSitePort}`;
  const chatgate = await startChatgate({
    dir,
    host: "127.0.0.1",
    port: brokerPort,
    tls: ca.leaf("127.0.0.1"),
    caFile: ca.certFile,
    // LemonLDAP::NG 2.16 sends the user's sub as a front-channel logout's sid.
    provider: { issuer: llng.issuer, clientId: CLIENT.id, clientSecret: CLIENT.secret, toml: 'frontchannel_logout_id = "sub"' },
    apps: `
[[apps]]
id = "support"
origins = ["${hostOrigin}", "${sameSiteOrigin}"]
provider = "oidc"
chat_audience = "${CHAT_AUDIENCE}"
`,
  });
  const host = await startHost({ host: "127.0.0.1", port: hostPort, tls: ca.leaf("localhost"), broker, app: "support" });
  host.url = hostOrigin;
  const sameSite = await startHost({ host: "127.0.0.4", port: sameSitePort, tls: llngTls, broker, app: "support" });
  return {
    dir,
    ca,
    llng,
    chatgate,
    host,
    sameSite,
    botSecret: chatgate.createBot("support"),
    async stop() {
      await Promise.all([chatgate.stop(), llng.close(), host.close(), sameSite.close()]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function silentSignIn(page) {
  return page.evaluate(() => window.settle(ChatGate.signIn(window.chatgateOptions)));
}

/** Signs in through LemonLDAP::NG in the popup (its login form when shown). */
async function popupSignIn(page) {
  const [popup] = await Promise.all([page.context().waitForEvent("page"), page.click("#signin-popup")]);
  const which = await Promise.race([
    popup.waitForSelector("#userfield", { timeout: 15000 }).then(() => "login"),
    popup.waitForEvent("close", { timeout: 15000 }).then(() => "closed"),
  ]).catch((e) => {
    if (popup.isClosed()) return "closed"; // closed before the listener was registered
    throw e;
  });
  if (which === "login") {
    await popup.fill("#userfield", LLNG_USER.username);
    await popup.fill("#passwordfield", LLNG_USER.password);
    // Listen for the close before submitting: the popup may close before a
    // listener registered afterwards would ever hear it.
    const closed = popup.waitForEvent("close", { timeout: 15000 });
    await popup.click("#lform button[type=submit]");
    await closed.catch(async (e) => {
      const url = popup.isClosed() ? "(closed)" : popup.url();
      const text = popup.isClosed() ? "" : (await popup.content()).replace(/\s+/g, " ").slice(0, 3000);
      throw new Error(`${e.message}; the popup is at ${url}: ${text}`);
    });
  }
  return page.evaluate(() => window.popupResult);
}

function botLookup() {
  return httpsRequest("GET", `${world.chatgate.url}/v1/users/${encodeURIComponent(USER_ID)}/token`, {
    ca: world.chatgate.ca,
    headers: { authorization: `Bearer ${world.botSecret}` },
  });
}

async function userinfo(accessToken) {
  const meta = await httpsRequest("GET", `${world.llng.issuer}.well-known/openid-configuration`, { ca: world.ca.pem });
  return httpsRequest("GET", meta.body.userinfo_endpoint, {
    ca: world.ca.pem,
    headers: { authorization: `Bearer ${accessToken}` },
  });
}

async function until(what, probe, timeout = 15000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe("LemonLDAP::NG, a second real identity provider", { skip: !REQUIRE && missing ? `not installed: ${missing}` : false }, () => {
  let browser;
  let page;

  before(async () => {
    if (missing) throw new Error(`LemonLDAP::NG is not installed: ${missing}`);
    world = await startLlngWorld();
    browser = await launch({ thirdPartyCookies: "allow" });
    page = await browser.context.newPage();
  });

  after(async () => {
    if (process.env.CHATGATE_TEST_DUMP_LOGS) (await import("node:fs")).writeFileSync(process.env.CHATGATE_TEST_DUMP_LOGS, world?.chatgate.logs.join("") ?? "");
    await browser?.close();
    await world?.stop();
    world = null;
  });

  it("check-config --probe says what LemonLDAP::NG offers and what to register there", () => {
    const out = execFileSync(chatgateBinary(), ["check-config", "--probe", "--config", world.chatgate.configFile], {
      env: { ...process.env, E2E_CLIENT_SECRET: CLIENT.secret },
      encoding: "utf8",
    });
    assert.match(out, /issuer +https:\/\/127\.0\.0\.4:\d+\/ \(matches the configuration\)/, out);
    assert.match(out, /revocation +none/, out);
    assert.match(out, /front-channel only: register https:\/\/127\.0\.0\.1:\d+\/v1\/frontchannel-logout/, out);
    assert.match(out, /with the session \(sid\) required/, out);
  });

  it("first visit from another site: LemonLDAP::NG answers prompt=none with its login page, and the widget gives up at once", async () => {
    await page.goto(world.host.url);
    const first = await silentSignIn(page);
    assert.equal(first.err, "interaction_required", JSON.stringify(first));
  });

  it("popup sign-in; the bot's token works at LemonLDAP::NG's userinfo and is refreshed (twice, no rotation)", async () => {
    const result = await popupSignIn(page);
    assert.ok(result.ok, JSON.stringify(result));
    assert.equal(result.ok.user.id, USER_ID);
    assert.equal(result.ok.user.name, LLNG_USER.name);
    // Access tokens live 30 s there, within refresh_skew: each lookup refreshes.
    const tokens = [];
    for (let n = 0; n < 3; n++) {
      const lookup = await botLookup();
      assert.equal(lookup.status, 200, JSON.stringify(lookup.body));
      tokens.push(lookup.body.access_token);
      const info = await userinfo(lookup.body.access_token);
      assert.equal(info.status, 200, JSON.stringify(info.body));
      assert.equal(info.body.sub, LLNG_USER.username);
    }
    assert.equal(new Set(tokens).size, 3, "three lookups, three refreshed access tokens");
  });

  it("a host page on LemonLDAP::NG's own site signs in silently through its session", async () => {
    const other = await browser.context.newPage();
    try {
      await other.goto(world.sameSite.url);
      const silent = await silentSignIn(other);
      assert.ok(silent.ok, JSON.stringify(silent));
      assert.equal(silent.ok.user.id, USER_ID);
    } finally {
      await other.close();
    }
  });

  it("a sign-out at LemonLDAP::NG's portal ends the chat session within seconds (front-channel logout)", async () => {
    assert.equal((await botLookup()).status, 200);
    const portal = await browser.context.newPage();
    const seen = [];
    portal.on("console", (m) => seen.push(`console ${m.type()}: ${m.text()}`));
    portal.on("requestfailed", (r) => seen.push(`failed ${r.url()} ${r.failure()?.errorText}`));
    portal.on("response", (r) => seen.push(`${r.status()} ${r.url()} csp=${r.headers()["content-security-policy"] ?? ""}`));
    try {
      await portal.goto(`${world.llng.issuer}?logout=1`);
      await until("chatgate to hear of the logout", async () => (await botLookup()).status === 404).catch(async (e) => {
        const frames = portal.frames().map((f) => f.url());
        throw new Error(`${e.message}; the portal is at ${portal.url()} with frames ${JSON.stringify(frames)}: ${seen.join("\n")}\n${world.chatgate.logs.join("").split("\n").filter((l) => /frontchannel|front-channel/.test(l)).join("\n")}`);
      });
    } finally {
      await portal.close();
    }
    await page.reload();
    const after = await silentSignIn(page);
    assert.ok(after.err, `no silent sign-in after the IdP's logout: ${JSON.stringify(after)}`);
  });

  it("a refresh token LemonLDAP::NG no longer knows gives reauth_required, never an endless 503", async () => {
    const result = await popupSignIn(page);
    assert.ok(result.ok, JSON.stringify(result));
    assert.equal((await botLookup()).status, 200);
    // An administrator deletes the user's sessions, offline ones included.
    world.llng.deleteAllSessions();
    const refused = await botLookup();
    assert.equal(refused.status, 401, JSON.stringify(refused.body));
    assert.equal(refused.body.error, "reauth_required");
    const status = await httpsRequest("GET", `${world.chatgate.url}/v1/users/${encodeURIComponent(USER_ID)}`, {
      ca: world.chatgate.ca,
      headers: { authorization: `Bearer ${world.botSecret}` },
    });
    assert.equal(status.body.needs_reauth, true);
    const refusal = world.chatgate.logs.join("").split("\n").find((l) => l.includes("refused the refresh token"));
    assert.match(refusal ?? "", /idp_error\S*=\S*invalid_request/, `the decision is logged with LemonLDAP::NG's own code: ${refusal}`);
  });

  it("'Sign out everywhere' signs out at LemonLDAP::NG in a popup, and says the IdP revoked nothing", async () => {
    await page.reload();
    const result = await popupSignIn(page);
    assert.ok(result.ok, JSON.stringify(result));
    const [popup] = await Promise.all([page.context().waitForEvent("page"), page.click("#signout-everywhere")]);
    // LemonLDAP::NG's logout page frames each relying party's front-channel
    // logout and waits for a click (or 16 s) before going back.
    const closed = popup.waitForEvent("close", { timeout: 15000 });
    await popup.click("#form button[type=submit]", { timeout: 15000 });
    await closed.catch(async (e) => {
      const text = popup.isClosed() ? "" : (await popup.content()).replace(/\s+/g, " ");
      throw new Error(`${e.message}; the sign-out popup is at ${popup.isClosed() ? "(closed)" : popup.url()}: ${text.slice(text.indexOf("<body"), text.indexOf("<body") + 2500)}`);
    });
    const out = await page.evaluate(() => window.signOutResult);
    assert.deepEqual(
      out.ok,
      { signed_out: true, revoked: false, revocation_error: "no_revocation_endpoint", idp_signed_out: true },
      JSON.stringify(out),
    );
    assert.equal((await botLookup()).status, 404);
  });
});
