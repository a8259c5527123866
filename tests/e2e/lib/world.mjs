// Everything a browser test needs, each on its own site over HTTPS:
//   host page   https://localhost:P1    (allow-listed origin of app "support")
//   chatgate    https://127.0.0.1:P2
//   IdP         https://127.0.0.2:P3    (npm oidc-provider)
//   other page  https://127.0.0.3:P4    (NOT allow-listed)
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeCa } from "./certs.mjs";
import { freePort } from "./ports.mjs";
import { startIdp } from "./idp.mjs";
import { startDevIdp } from "./devidp.mjs";
import { startChatgate } from "./chatgate.mjs";
import { startHost } from "./host.mjs";

export const CLIENT = { id: "chatgate-e2e", secret: "e2e-client-secret-not-a-real-one" };
export const CHAT_AUDIENCE = "https://bot.example.com";
// The host backend's HS256 key for host-signed tokens (test value).
export const HOST_KEY = { kid: "h1", secret: "e2e-host-secret-that-is-at-least-32-bytes" };

/** The IdPs a world can run: npm oidc-provider, or chatgate's development provider. */
export const IDP_KINDS = ["oidc-provider", "dev"];

/**
 * `events`: { url, secret } makes app "support" send its events there
 * (`events_url`, `events_secret_env`).
 */
export const SPA_CLIENT = "spa-e2e";

/**
 * `spa`: also register a public single-page client at the IdP (benchmarks);
 * `{ loadUserInfo: true }` has oidc-client-ts also ask the IdP's userinfo.
 * `appToml`: extra lines for app "support" (e.g. `bind_chat_tokens = "dpop"`).
 */
/**
 * `boundApp`: also configure app "bound" on the same host origin, with
 * `bind_chat_tokens = "dpop"`.
 */
export async function startWorld({ idp: idpKind = "oidc-provider", accessTokenTtl, chatgateToml = "", appToml = "", events, spa = false, boundApp = false, databaseUrl } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "chatgate-e2e-"));
  const ca = makeCa(dir);
  const [hostPort, brokerPort, idpPort, otherPort] = await Promise.all([
    freePort("127.0.0.1"),
    freePort("127.0.0.1"),
    freePort("127.0.0.2"),
    freePort("127.0.0.3"),
  ]);
  const brokerUrl = `https://127.0.0.1:${brokerPort}`;
  const idpOptions = {
    host: "127.0.0.2",
    port: idpPort,
    tls: ca.leaf("127.0.0.2"),
    ca: ca.pem,
    client: { ...CLIENT, redirectUri: `${brokerUrl}/v1/callback` },
    spa: spa ? { id: SPA_CLIENT, redirectUri: `https://localhost:${hostPort}/oidc-callback.html` } : undefined,
    accessTokenTtl,
  };
  const idp = idpKind === "dev" ? await startDevIdp(idpOptions) : await startIdp(idpOptions);
  const hostOrigin = `https://localhost:${hostPort}`;
  const chatgate = await startChatgate({
    dir,
    host: "127.0.0.1",
    port: brokerPort,
    tls: ca.leaf("127.0.0.1"),
    caFile: ca.certFile,
    provider: { issuer: idp.issuer, clientId: CLIENT.id, clientSecret: CLIENT.secret },
    extraToml: chatgateToml,
    databaseUrl,
    env: { E2E_HOST_SECRET: HOST_KEY.secret, E2E_EVENTS_SECRET: events?.secret ?? "" },
    apps: `
[[apps]]
id = "support"
origins = ["${hostOrigin}"]
provider = "oidc"
chat_audience = "${CHAT_AUDIENCE}"
host_keys = [{ kid = "${HOST_KEY.kid}", alg = "HS256", secret_env = "E2E_HOST_SECRET" }]
${events ? `events_url = "${events.url}"\nevents_secret_env = "E2E_EVENTS_SECRET"` : ""}
${appToml}
${boundApp ? `
[[apps]]
id = "bound"
origins = ["${hostOrigin}"]
provider = "oidc"
chat_audience = "${CHAT_AUDIENCE}"
bind_chat_tokens = "dpop"
` : ""}
`,
  });
  const hostTls = ca.leaf("localhost");
  const host = await startHost({
    host: "127.0.0.1",
    port: hostPort,
    tls: hostTls,
    broker: chatgate.url,
    app: "support",
    hostKey: HOST_KEY,
    spa: spa ? { authority: idp.issuer, clientId: SPA_CLIENT, redirectUri: `https://localhost:${hostPort}/oidc-callback.html`, loadUserInfo: spa.loadUserInfo === true } : undefined,
  });
  host.url = hostOrigin;
  host.origin = hostOrigin;
  const other = await startHost({
    host: "127.0.0.3",
    port: otherPort,
    tls: ca.leaf("127.0.0.3"),
    broker: chatgate.url,
    app: "support",
    hostKey: HOST_KEY,
  });
  return {
    dir,
    ca,
    idp,
    chatgate,
    host,
    other,
    async stop() {
      await Promise.all([chatgate.stop(), idp.close(), host.close(), other.close()]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
