// The embedding site: a page that loads widget.js from chatgate the way a
// customer's page would.
import { createServer } from "node:https";
import { randomUUID } from "node:crypto";
import { SignJWT } from "jose";

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

export async function startHost({ host, port, tls, broker, app, hostKey }) {
  const page = hostPage(broker, app);
  const server = createServer({ key: tls.key, cert: tls.cert }, async (req, res) => {
    if (req.url === "/host-token" && hostKey) {
      res.setHeader("content-type", "text/plain");
      res.setHeader("cache-control", "no-store");
      res.end(await signHostToken(hostKey, app));
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
