// chatgate's own development OpenID provider (`chatgate demo idp`), run as a
// separate process behind the same interface as ./idp.mjs, so the browser
// tests hold it to the same standard as the npm oidc-provider.
import { spawn } from "node:child_process";
import { chatgateBinary, httpsRequest } from "./chatgate.mjs";

export const DEV_USERS = { alice: { password: "alice" } };

export async function startDevIdp({ host, port, tls, ca, client, accessTokenTtl = 300 }) {
  const issuer = `https://${host}:${port}`;
  const logs = [];
  const child = spawn(
    chatgateBinary(),
    [
      "demo", "idp",
      "--listen", `${host}:${port}`,
      "--issuer", issuer,
      "--client-id", client.id,
      "--client-secret-env", "E2E_DEV_IDP_SECRET",
      "--redirect-uri", client.redirectUri,
      "--access-token-ttl", `${accessTokenTtl}s`,
      "--tls-cert", tls.certFile,
      "--tls-key", tls.keyFile,
    ],
    { env: { ...process.env, E2E_DEV_IDP_SECRET: client.secret }, stdio: ["ignore", "pipe", "pipe"] },
  );
  child.stdout.on("data", (d) => logs.push(d.toString()));
  child.stderr.on("data", (d) => logs.push(d.toString()));
  const deadline = Date.now() + 20000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`dev IdP exited:\n${logs.join("")}`);
    try {
      const r = await httpsRequest("GET", `${issuer}/.well-known/openid-configuration`, { ca });
      if (r.status === 200) break;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) throw new Error(`dev IdP did not start:\n${logs.join("")}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    kind: "dev",
    issuer,
    user: { username: "alice", password: DEV_USERS.alice.password },
    probe: { set: `${issuer}/dev/cookie-probe/set`, read: `${issuer}/dev/cookie-probe/read` },
    async stats() {
      const { body } = await httpsRequest("GET", `${issuer}/dev/stats`, { ca });
      return {
        authorizationRequests: body.authorization_requests,
        refreshRequests: body.refresh_requests,
        revocations: body.revocations,
      };
    },
    async revokeConsents() {
      await httpsRequest("POST", `${issuer}/dev/forget-consents`, { ca, body: "" });
    },
    close: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}
