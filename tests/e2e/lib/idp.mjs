// The real OpenID provider for the browser tests: npm `oidc-provider` over
// HTTPS on its own site, with a minimal login/consent UI and a few test-only
// controls (counting authorization requests, forgetting consents, a cookie
// probe that proves whether the browser sends third-party cookies).
import { createServer, request as httpsRequest } from "node:https";
import { generateKeyPair, exportJWK } from "jose";
import Provider from "oidc-provider";

export const USERS = {
  alice: { password: "alice-pw", name: "Alice Example", email: "alice@example.com" },
};

function html(title, body) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title></head><body>${body}</body></html>`;
}

/** `fetch` over node:https trusting `ca`, returning a WHATWG Response. */
function trustingFetch(url, options, ca) {
  return new Promise((resolve, reject) => {
    const headers = Object.fromEntries(new Headers(options.headers));
    const req = httpsRequest(url, { method: options.method || "GET", headers, ca, signal: options.signal }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const body = [204, 304].includes(res.statusCode) ? null : Buffer.concat(chunks);
        const responseHeaders = new Headers();
        for (const [k, v] of Object.entries(res.headers)) {
          for (const value of [].concat(v)) responseHeaders.append(k, value);
        }
        resolve(new Response(body, { status: res.statusCode, headers: responseHeaders }));
      });
    });
    req.on("error", reject);
    if (options.body !== undefined && options.body !== null) req.write(String(options.body));
    req.end();
  });
}

function escape(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function readForm(req) {
  let body = "";
  for await (const chunk of req) body += chunk;
  return Object.fromEntries(new URLSearchParams(body));
}

/**
 * Starts the IdP at https://{host}:{port}. `client` = { id, secret, redirectUri }.
 * `accessTokenTtl` (seconds) keeps access tokens short for refresh tests.
 */
/**
 * `spa` = { id, redirectUri }: also a public single-page client (PKCE, no
 * secret), for the renewal benchmark's oidc-client-ts.
 */
export async function startIdp({ host, port, tls, ca, client, spa, accessTokenTtl = 300 }) {
  const issuer = `https://${host}:${port}`;
  // chatgate's public URL: where back-channel logout tokens go and where the
  // IdP sends the browser back after signing out.
  const broker = new URL(client.redirectUri).origin;
  const { privateKey } = await generateKeyPair("RS256", { extractable: true });
  const jwk = { ...(await exportJWK(privateKey)), kid: "e2e-rs256", alg: "RS256", use: "sig" };
  const stats = { authorizationRequests: 0, tokenRequests: 0, refreshRequests: 0, revocations: 0 };
  // Deviations from the specification some real IdPs show, switched on by tests.
  const quirks = { loginPageForPromptNone: false };

  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: client.id,
        client_secret: client.secret,
        redirect_uris: [client.redirectUri],
        grant_types: ["authorization_code", "refresh_token"],
        response_types: ["code"],
        token_endpoint_auth_method: "client_secret_basic",
        backchannel_logout_uri: `${broker}/v1/backchannel-logout`,
        backchannel_logout_session_required: true,
        post_logout_redirect_uris: [`${broker}/v1/signed-out`],
      },
      ...(spa
        ? [{
            client_id: spa.id,
            redirect_uris: [spa.redirectUri],
            grant_types: ["authorization_code"],
            response_types: ["code"],
            token_endpoint_auth_method: "none",
          }]
        : []),
    ],
    // Back-channel logout requests go to chatgate on loopback with the test
    // CA: oidc-provider's own fetch refuses both (SSRF protection), so this
    // one trusts the CA and sends what oidc-provider asks.
    fetch: (url, options) => trustingFetch(url, options, ca),
    jwks: { keys: [jwk] },
    cookies: {
      keys: ["e2e-cookie-key-not-secret"],
      // Like Entra ID and Google: the session cookie travels in cross-site
      // iframes (when the browser allows third-party cookies at all).
      long: { httpOnly: true, sameSite: "none", secure: true },
      short: { httpOnly: true, sameSite: "lax", secure: true },
    },
    claims: { openid: ["sub"], profile: ["name"], email: ["email"] },
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      userinfo: { enabled: true },
      backchannelLogout: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: async (ctx, form) => {
          ctx.body = html("Sign out", `${form}<h1>Sign out of the test IdP?</h1>
            <button id="logout-yes" type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>`);
        },
        postLogoutSuccessSource: async (ctx) => {
          ctx.body = html("Signed out", "<p id='signed-out'>Signed out.</p>");
        },
      },
    },
    pkce: { required: () => true },
    // Entra ID issues refresh tokens on silent (prompt=none) flows too;
    // oidc-provider by default only when prompt=consent was used.
    issueRefreshToken: async (_ctx, c) => c.grantTypeAllowed("refresh_token"),
    expiresWithSession: async () => false,
    rotateRefreshToken: true,
    ttl: {
      AccessToken: accessTokenTtl,
      AuthorizationCode: 60,
      IdToken: 300,
      RefreshToken: 24 * 3600,
      Interaction: 600,
      Session: 24 * 3600,
      Grant: 24 * 3600,
    },
    findAccount: async (_ctx, sub) => {
      const user = USERS[sub];
      if (!user) return undefined;
      return { accountId: sub, claims: async () => ({ sub, name: user.name, email: user.email }) };
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    renderError: async (ctx, out) => {
      ctx.type = "html";
      ctx.body = html("IdP error", `<pre id="error">${escape(JSON.stringify(out))}</pre>`);
    },
  });
  provider.on("authorization.accepted", () => {});
  const backchannel = { sent: 0, errors: [] };
  provider.on("backchannel.success", () => {
    backchannel.sent += 1;
  });
  provider.on("backchannel.error", (_ctx, err) => {
    backchannel.errors.push(String(err?.message || err));
  });
  provider.on("grant.success", (ctx) => {
    stats.tokenRequests += 1;
    if (ctx.oidc.params?.grant_type === "refresh_token") stats.refreshRequests += 1;
  });

  const oidc = provider.callback();

  async function interaction(req, res) {
    const details = await provider.interactionDetails(req, res);
    const { uid, prompt, params, session } = details;
    if (req.method === "GET") {
      res.setHeader("content-type", "text/html; charset=utf-8");
      if (prompt.name === "login") {
        return res.end(html("Sign in", `
          <h1>Sign in to the test IdP</h1>
          <form id="login" method="post" action="/interaction/${uid}/login">
            <input name="login" id="username" value="">
            <input name="password" id="password" type="password" value="">
            <button id="submit" type="submit">Sign in</button>
          </form>`));
      }
      return res.end(html("Consent", `
        <h1>Allow ${escape(params.client_id)}?</h1>
        <p id="scopes">${escape(params.scope)}</p>
        <form id="consent" method="post" action="/interaction/${uid}/confirm">
          <button id="allow" type="submit">Allow</button>
        </form>`));
    }
    const form = await readForm(req);
    if (req.url.endsWith("/login")) {
      const user = USERS[form.login];
      if (!user || user.password !== form.password) {
        res.statusCode = 401;
        return res.end(html("Sign in", "<p id='error'>wrong password</p>"));
      }
      return provider.interactionFinished(req, res, { login: { accountId: form.login } }, { mergeWithLastSubmission: false });
    }
    let { grantId } = details;
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(" "));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    grantId = await grant.save();
    const consent = details.grantId ? {} : { grantId };
    return provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
  }

  // Consents given so far, so a test can take them back (consent_required).
  const grants = new Set();
  const origSave = provider.Grant.prototype.save;
  provider.Grant.prototype.save = async function save(...args) {
    const id = await origSave.apply(this, args);
    grants.add(id);
    return id;
  };

  const server = createServer({ key: tls.key, cert: tls.cert }, (req, res) => {
    const url = new URL(req.url, issuer);
    if (url.pathname === "/auth") stats.authorizationRequests += 1;
    // Like LemonLDAP::NG without its session cookie: prompt=none answered
    // with the login page, which refuses to be framed.
    if (url.pathname === "/auth" && url.searchParams.get("prompt") === "none" && quirks.loginPageForPromptNone) {
      res.setHeader("content-type", "text/html; charset=utf-8");
      res.setHeader("x-frame-options", "DENY");
      return res.end(html("Sign in", `<form id="login"><input name="login"></form>`));
    }
    if (url.pathname === "/token/revocation" && req.method === "POST") stats.revocations += 1;
    if (url.pathname.startsWith("/interaction/")) {
      interaction(req, res).catch((err) => {
        res.statusCode = 500;
        res.end(html("error", `<pre>${escape(err.stack)}</pre>`));
      });
      return;
    }
    // Cookie probe: /test/cookie/set (visit top-level), /test/cookie/read (frame it).
    if (url.pathname === "/test/cookie/set") {
      res.setHeader("set-cookie", "probe=1; Path=/; Secure; SameSite=None; Max-Age=3600");
      return res.end(html("probe", "cookie set"));
    }
    if (url.pathname === "/test/cookie/read") {
      const sent = /(^|;\s*)probe=1/.test(req.headers.cookie || "");
      res.setHeader("content-type", "text/html; charset=utf-8");
      return res.end(html("probe", `<script>parent.postMessage({ probeCookieSent: ${sent} }, "*")</script>`));
    }
    // Whether a framed page may keep a cookie of its own, even partitioned
    // (CHIPS): frame /test/cookie/frame-set, then /test/cookie/frame-read.
    if (url.pathname === "/test/cookie/frame-set") {
      res.setHeader("set-cookie", "kept=1; Path=/; Secure; SameSite=None; Partitioned; Max-Age=3600");
      res.setHeader("content-type", "text/html; charset=utf-8");
      return res.end(html("probe", `<script>parent.postMessage({ probeCookieSet: true }, "*")</script>`));
    }
    if (url.pathname === "/test/cookie/frame-read") {
      const kept = /(^|;\s*)kept=1/.test(req.headers.cookie || "");
      res.setHeader("content-type", "text/html; charset=utf-8");
      return res.end(html("probe", `<script>parent.postMessage({ probeCookieKept: ${kept} }, "*")</script>`));
    }
    oidc(req, res);
  });
  await new Promise((resolve) => server.listen(port, host, resolve));

  return {
    kind: "oidc-provider",
    quirks,
    issuer,
    user: { username: "alice", password: USERS.alice.password },
    probe: {
      set: `${issuer}/test/cookie/set`,
      read: `${issuer}/test/cookie/read`,
      frameSet: `${issuer}/test/cookie/frame-set`,
      frameRead: `${issuer}/test/cookie/frame-read`,
    },
    async stats() {
      return { ...stats };
    },
    /** Back-channel logout requests chatgate answered 200, and the failures. */
    backchannel,
    /** Where a browser signs out at the IdP directly (RP-initiated logout without a client). */
    endSessionUrl: `${issuer}/session/end`,
    provider,
    // Forget every consent, so the next authorization needs the consent prompt.
    async revokeConsents() {
      for (const id of grants) {
        const grant = await provider.Grant.find(id);
        if (grant) await grant.destroy();
      }
      grants.clear();
    },
    close: () => new Promise((resolve) => {
      server.closeAllConnections?.();
      server.close(() => resolve());
    }),
  };
}
