// The embedding site: a page that loads widget.js from chatgate the way a
// customer's page would.
import { createServer } from "node:https";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { SignJWT } from "jose";

// oidc-client-ts's browser bundle, for the renewal benchmark's comparison.
const OIDC_CLIENT_TS = fileURLToPath(new URL("../node_modules/oidc-client-ts/dist/browser/oidc-client-ts.min.js", import.meta.url));

// What a host backend does for host-signed sign-in: it already knows its user
// (here: a fixed test user) and signs a short-lived, single-use JWT for the app.
async function signHostToken(hostKey, app) {
  return new SignJWT({ name: "Harriet Host", email: "harriet@contoso.example" })
    .setProtectedHeader({ alg: "HS256", kid: hostKey.kid })
    .setSubject("customer-7")
    .setAudience(app)
    .setIssuedAt()
    .setExpirationTime("2m")
    .setJti(randomUUID())
    .sign(new TextEncoder().encode(hostKey.secret));
}

export function hostPage(broker, app) {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Contoso support</title>
<script src="${broker}/v1/widget.js"></script>
</head>
<body>
<h1>Contoso support</h1>
<button id="signin-popup" type="button">Sign in to chat</button>
<button id="signout-everywhere" type="button">Sign out everywhere</button>
<div id="status">signed out</div>
<script>
  window.chatgateOptions = { broker: ${JSON.stringify(broker)}, app: ${JSON.stringify(app)} };
  // How many iframes the widget opened (a renewal by fetch opens none).
  window.iframesOpened = 0;
  new MutationObserver((mutations) => {
    for (const m of mutations) for (const n of m.addedNodes) if (n.tagName === "IFRAME") window.iframesOpened += 1;
  }).observe(document.documentElement, { childList: true, subtree: true });
  // Settles a promise into a plain object the test can read.
  window.settle = (p) => p.then((ok) => ({ ok }), (err) => ({ err: err.code, message: err.message }));
  document.getElementById("signin-popup").addEventListener("click", () => {
    window.popupResult = window.settle(ChatGate.signInWithPopup(window.chatgateOptions));
  });
  // Signs out of chatgate and, in a popup, at the IdP.
  document.getElementById("signout-everywhere").addEventListener("click", () => {
    window.signOutResult = window.settle(ChatGate.signOut({ ...window.chatgateOptions, revoke: true, idp: true }));
  });
</script>
</body>
</html>`;
}

/**
 * `spa` = { authority, clientId, redirectUri, loadUserInfo }: also serve
 * oidc-client-ts and its callback page, and set `window.spaSettings` for a
 * UserManager.
 */
export async function startHost({ host, port, tls, broker, app, hostKey, spa }) {
  const spaScript = spa
    ? `<script src="/oidc-client-ts.js"></script>
<script>window.spaSettings = ${JSON.stringify({
        authority: spa.authority,
        client_id: spa.clientId,
        redirect_uri: spa.redirectUri,
        popup_redirect_uri: spa.redirectUri,
        silent_redirect_uri: spa.redirectUri,
        scope: "openid profile email",
        response_type: "code",
        loadUserInfo: spa.loadUserInfo === true,
      })};</script>`
    : "";
  const page = hostPage(broker, app).replace("</head>", `${spaScript}\n</head>`);
  const callbackPage = `<!doctype html><html><head><script src="/oidc-client-ts.js"></script></head><body>
<script>new oidc.UserManager(${JSON.stringify(spa ? { authority: spa.authority, client_id: spa.clientId, redirect_uri: spa.redirectUri } : {})}).signinCallback().catch((e) => document.body.textContent = String(e));</script></body></html>`;
  const server = createServer({ key: tls.key, cert: tls.cert }, async (req, res) => {
    if (req.url === "/host-token" && hostKey) {
      res.setHeader("content-type", "text/plain");
      res.setHeader("cache-control", "no-store");
      res.end(await signHostToken(hostKey, app));
    } else if (spa && req.url === "/oidc-client-ts.js") {
      res.setHeader("content-type", "text/javascript");
      res.end(readFileSync(OIDC_CLIENT_TS));
    } else if (spa && req.url.startsWith("/oidc-callback.html")) {
      res.setHeader("content-type", "text/html; charset=utf-8");
      res.end(callbackPage);
    } else if (req.url === "/" || req.url.startsWith("/?")) {
      res.setHeader("content-type", "text/html; charset=utf-8");
      res.end(page);
    } else {
      res.statusCode = 404;
      res.end("not found");
    }
  });
  await new Promise((resolve) => server.listen(port, host, resolve));
  return {
    url: `https://${host}:${port}`,
    origin: `https://${host}:${port}`,
    close: () => new Promise((resolve) => {
      server.closeAllConnections?.();
      server.close(() => resolve());
    }),
  };
}
