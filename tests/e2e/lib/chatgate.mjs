// Runs the real chatgate binary for the browser tests: HTTPS on its own site,
// SQLite in a temporary directory (or the `databaseUrl` given), trusting the
// test CA for IdP calls.
import { spawn, execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import https from "node:https";

const ROOT = resolve(fileURLToPath(new URL(".", import.meta.url)), "../../..");

export function chatgateBinary() {
  return process.env.CHATGATE_BIN || join(ROOT, "target/debug/chatgate");
}

/** One HTTPS request trusting `ca`; resolves { status, headers, body (parsed JSON or text) }. */
export function httpsRequest(method, url, { ca, headers = {}, body } = {}) {
  return new Promise((resolvePromise, reject) => {
    const req = https.request(url, { method, ca, headers }, (res) => {
      let text = "";
      res.on("data", (c) => (text += c));
      res.on("end", () => {
        let parsed = text;
        try {
          parsed = text ? JSON.parse(text) : null;
        } catch {
          /* keep text */
        }
        resolvePromise({ status: res.statusCode, headers: res.headers, body: parsed });
      });
    });
    req.on("error", reject);
    if (body !== undefined) req.end(typeof body === "string" ? body : JSON.stringify(body));
    else req.end();
  });
}

export function httpsGetJson(url, ca) {
  return new Promise((resolvePromise, reject) => {
    https
      .get(url, { ca }, (res) => {
        let body = "";
        res.on("data", (c) => (body += c));
        res.on("end", () => {
          try {
            resolvePromise({ status: res.statusCode, body: JSON.parse(body) });
          } catch (e) {
            reject(new Error(`${url}: ${res.statusCode} ${body}`));
          }
        });
      })
      .on("error", reject);
  });
}

/**
 * Starts chatgate. `apps` is TOML for the [[apps]] tables; `provider` is
 * { issuer, clientId, clientSecret } or null.
 */
export async function startChatgate({ dir, host, port, tls, caFile, provider, apps, extraToml = "", env = {}, databaseUrl = "sqlite://chatgate.db?mode=rwc" }) {
  // `provider.toml`: extra lines of the [[providers]] table.
  const bin = chatgateBinary();
  const vaultKey = execFileSync(bin, ["keys", "generate", "vault"]).toString().trim();
  writeFileSync(join(dir, "vault.key"), vaultKey, { mode: 0o600 });
  execFileSync(bin, ["keys", "generate", "signing", "--out", join(dir, "signing.pem")], { stdio: "ignore" });
  const publicUrl = `https://${host}:${port}`;
  const config = `
public_url = "${publicUrl}"
listen = "${host}:${port}"
database_url = "${databaseUrl}"
idp_ca_file = "${caFile}"
log_level = "${process.env.CHATGATE_E2E_LOG_LEVEL || "info,chatgate=debug"}"
shutdown_drain = "0s"
${extraToml}
[tls]
cert_file = "${tls.certFile}"
key_file = "${tls.keyFile}"
[vault]
keys = [{ id = "e2e", key_file = "vault.key" }]
[signing]
key_file = "signing.pem"
${provider ? `
[[providers]]
id = "oidc"
issuer = "${provider.issuer}"
client_id = "${provider.clientId}"
client_secret_env = "E2E_CLIENT_SECRET"
${provider.toml ?? ""}
` : ""}
${apps}
`;
  const configFile = join(dir, "chatgate.toml");
  writeFileSync(configFile, config);
  const logs = [];
  const child = spawn(bin, ["serve", "--config", configFile], {
    env: { ...process.env, ...env, E2E_CLIENT_SECRET: provider?.clientSecret ?? "", RUST_LOG: "" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout.on("data", (d) => logs.push(d.toString()));
  child.stderr.on("data", (d) => logs.push(d.toString()));
  const ca = caFile ? (await import("node:fs")).readFileSync(caFile) : undefined;
  const deadline = Date.now() + 30000;
  for (;;) {
    if (child.exitCode !== null) {
      throw new Error(`chatgate exited with ${child.exitCode}:\n${logs.join("")}`);
    }
    try {
      const r = await httpsGetJson(`${publicUrl}/readyz`, ca);
      if (r.status === 200) break;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) throw new Error(`chatgate did not become ready:\n${logs.join("")}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url: publicUrl,
    configFile,
    /** The process id of `chatgate serve`. */
    pid: child.pid,
    /** `chatgate bots create --app <app>`: the bot's secret. */
    createBot(app) {
      const out = execFileSync(bin, ["bots", "create", "--app", app, "--config", configFile], {
        env: { ...process.env, ...env, E2E_CLIENT_SECRET: provider?.clientSecret ?? "" },
        stdio: ["ignore", "pipe", "ignore"],
      });
      return out.toString().trim().split("\n").pop();
    },
    logs,
    ca,
    async jwks() {
      return (await httpsGetJson(`${publicUrl}/.well-known/jwks.json`, ca)).body;
    },
    /** How many `method route` requests chatgate answered with `status` (its /metrics). */
    async answered(method, route, status) {
      const text = await new Promise((resolvePromise, reject) => {
        https
          .get(`${publicUrl}/metrics`, { ca }, (res) => {
            let body = "";
            res.on("data", (c) => (body += c));
            res.on("end", () => resolvePromise(body));
          })
          .on("error", reject);
      });
      const line = text
        .split("\n")
        .find((l) => l.startsWith("chatgate_http_requests_total{") && l.includes(`method="${method}"`) && l.includes(`route="${route}"`) && l.includes(`status="${status}"`));
      return line ? Number(line.trim().split(/\s+/).pop()) : 0;
    },
    stop: () =>
      new Promise((resolvePromise) => {
        if (child.exitCode !== null) return resolvePromise();
        child.once("exit", () => resolvePromise());
        child.kill("SIGTERM");
      }),
  };
}
