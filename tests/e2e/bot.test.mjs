// A bot reads a signed-in user's access token through chatgate, across an
// expiry, with the real oidc-provider issuing short-lived access tokens and
// rotating refresh tokens.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { startWorld, IDP_KINDS } from "./lib/world.mjs";
import { launch, signInByPopup } from "./lib/browser.mjs";
import { httpsRequest } from "./lib/chatgate.mjs";

const ACCESS_TOKEN_TTL = 6; // seconds, at the IdP

let world;


for (const kind of IDP_KINDS) describe(`bot token lookup against the real IdP (${kind})`, () => {
  before(async () => {
    world = await startWorld({ idp: kind, accessTokenTtl: ACCESS_TOKEN_TTL, chatgateToml: 'refresh_skew = "2s"' });
  });

  after(async () => {
    await world?.stop();
    world = null;
  });

  it("a bot gets the user's token, gets a refreshed one after expiry, and the IdP accepts it at userinfo", async () => {
    const browser = await launch({ thirdPartyCookies: "allow" });
    let userId;
    try {
      const page = await browser.context.newPage();
      await page.goto(world.host.url);
      const result = await signInByPopup(page, world.idp.user);
      assert.ok(result.ok, JSON.stringify(result));
      userId = result.ok.user.id;
    } finally {
      await browser.close();
    }

    const secret = world.chatgate.createBot("support");
    assert.match(secret, /^cgb_/);
    const ca = world.chatgate.ca;
    const lookup = () =>
      httpsRequest("GET", `${world.chatgate.url}/v1/users/${encodeURIComponent(userId)}/token`, {
        ca,
        headers: { authorization: `Bearer ${secret}` },
      });
    const userinfo = async (accessToken) => {
      const meta = await httpsRequest("GET", `${world.idp.issuer}/.well-known/openid-configuration`, { ca });
      return httpsRequest("GET", meta.body.userinfo_endpoint, { ca, headers: { authorization: `Bearer ${accessToken}` } });
    };

    const first = await lookup();
    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.equal((await userinfo(first.body.access_token)).body.sub, "alice");
    const refreshesBefore = (await world.idp.stats()).refreshRequests;

    // Let the access token expire (past the 2 s refresh skew) and look it up again.
    await new Promise((r) => setTimeout(r, (ACCESS_TOKEN_TTL - 1) * 1000));
    const second = await lookup();
    assert.equal(second.status, 200, JSON.stringify(second.body));
    assert.notEqual(second.body.access_token, first.body.access_token);
    assert.equal((await world.idp.stats()).refreshRequests, refreshesBefore + 1);
    const info = await userinfo(second.body.access_token);
    assert.equal(info.status, 200, JSON.stringify(info.body));
    assert.equal(info.body.sub, "alice");
    assert.equal(info.body.email, "alice@example.com");

    // Fresh again: no further refresh. And the rotated refresh token keeps working.
    const third = await lookup();
    assert.equal(third.body.access_token, second.body.access_token);
    await new Promise((r) => setTimeout(r, (ACCESS_TOKEN_TTL - 1) * 1000));
    const fourth = await lookup();
    assert.equal(fourth.status, 200, JSON.stringify(fourth.body));
    assert.equal((await world.idp.stats()).refreshRequests, refreshesBefore + 2);
    assert.equal((await userinfo(fourth.body.access_token)).body.sub, "alice");
  });
});
