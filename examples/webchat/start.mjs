// Web Chat signed in through chatgate, on one machine: `npm start`.
//
//   host page   http://localhost:8500     index.html + Web Chat + widget.js
//   chatgate    http://127.0.0.1:8501     with [apps.direct_line] -> the stand-in
//   IdP         http://127.0.0.1:8502     npm oidc-provider, development logins
//   Direct Line http://127.0.0.1:8503     ./directline.mjs (stands in for Azure)
//   bot         http://127.0.0.1:8504     ../botbuilder/bot.mjs, unmodified
//
// chatgate is the binary of this repository (CHATGATE_BIN, else
// target/release/chatgate or target/debug/chatgate; build it with
// `cargo build --release`). The IdP accepts any login and password
// (oidc-provider's development interactions): never use it for real users.
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as netServer } from "node:net";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import Provider from "oidc-provider";
import { startDirectLine } from "./directline.mjs";

const HERE = fileURLToPath(new URL(".", import.meta.url));
const ROOT = resolve(HERE, "../..");
export const APP = "support";
export const CHAT_AUDIENCE = "https://bot.contoso.example";

function chatgateBinary() {
  if (process.env.CHATGATE_BIN) return process.env.CHATGATE_BIN;
  for (const build of ["release", "debug"]) {
    const bin = join(ROOT, "target", build, "chatgate");
    if (existsSync(bin)) return bin;
  }
  throw new Error("no chatgate binary: run `cargo build --release` at the repository's root (or set CHATGATE_BIN)");
}

function freePort() {
  return new Promise((resolvePort, reject) => {
    const s = netServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolvePort(port));
    });
    s.on("error", reject);
  });
}

/** The IdP: oidc-provider with its development login and consent pages. */
async function startIdp({ port, redirectUri, clientSecret }) {
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: "chatgate",
      client_secret: clientSecret,
      redirect_uris: [redirectUri],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
    }],
    claims: { openid: ["sub"], profile: ["name"], email: ["email"] },
    features: { devInteractions: { enabled: true }, userinfo: { enabled: true }, revocation: { enabled: true } },
    pkce: { required: () => true },
    ttl: { AccessToken: 3600, AuthorizationCode: 60, IdToken: 3600, RefreshToken: 14 * 86400, Interaction: 600, Session: 14 * 86400, Grant: 14 * 86400 },
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed("refresh_token"),
    // Whatever login one types is a user: "alice" is Alice <alice@example.com>.
    findAccount: async (_ctx, sub) => ({
      accountId: sub,
      claims: async () => ({ sub, name: sub.charAt(0).toUpperCase() + sub.slice(1), email: `${sub}@example.com` }),
    }),
  });
  provider.on("server_error", (_ctx, err) => console.error("IdP error:", err));
  const server = provider.listen(port, "127.0.0.1");
  await new Promise((r) => server.once("listening", r));
  return { issuer, userinfo: `${issuer}/me`, close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(() => r()); }) };
}

async function startChatgate({ bin, dir, port, idp, clientSecret, hostOrigin, directLine, directLineSecret }) {
  writeFileSync(join(dir, "vault.key"), execFileSync(bin, ["keys", "generate", "vault"]).toString().trim(), { mode: 0o600 });
  execFileSync(bin, ["keys", "generate", "signing", "--out", join(dir, "signing.pem")], { stdio: "ignore" });
  const url = `http://127.0.0.1:${port}`;
  const config = join(dir, "chatgate.toml");
  writeFileSync(config, `
public_url = "${url}"
listen = "127.0.0.1:${port}"
database_url = "sqlite://chatgate.db?mode=rwc"
log_level = "warn,chatgate=info"
shutdown_drain = "0s"
[vault]
keys = [{ id = "example", key_file = "vault.key" }]
[signing]
key_file = "signing.pem"
[[providers]]
id = "idp"
issuer = "${idp.issuer}"
client_id = "chatgate"
client_secret_env = "EXAMPLE_IDP_CLIENT_SECRET"
[[apps]]
id = "${APP}"
origins = ["${hostOrigin}"]
provider = "idp"
chat_audience = "${CHAT_AUDIENCE}"
[apps.direct_line]
secret_env = "EXAMPLE_DIRECT_LINE_SECRET"
endpoint = "${directLine.url}"
`);
  const env = { ...process.env, EXAMPLE_IDP_CLIENT_SECRET: clientSecret, EXAMPLE_DIRECT_LINE_SECRET: directLineSecret };
  const logs = [];
  const child = spawn(bin, ["serve", "--config", config], { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
  child.stdout.on("data", (d) => logs.push(d.toString()));
  child.stderr.on("data", (d) => logs.push(d.toString()));
  for (const deadline = Date.now() + 30000; ;) {
    if (child.exitCode !== null) throw new Error(`chatgate exited:\n${logs.join("")}`);
    if (await fetch(`${url}/readyz`).then((r) => r.ok, () => false)) break;
    if (Date.now() > deadline) throw new Error(`chatgate did not become ready:\n${logs.join("")}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const botSecret = execFileSync(bin, ["bots", "create", "--app", APP, "--config", config], { cwd: dir, env, stdio: ["ignore", "pipe", "ignore"] })
    .toString().trim().split("\n").pop();
  return { url, logs, botSecret, stop: () => stopChild(child) };
}

function stopChild(child) {
  return new Promise((r) => {
    if (child.exitCode !== null) return r();
    child.once("exit", () => r());
    child.kill("SIGTERM");
  });
}

async function startBot({ port, chatgate, userinfo }) {
  const logs = [];
  const child = spawn(process.execPath, [join(ROOT, "examples/botbuilder/bot.mjs")], {
    env: {
      ...process.env,
      PORT: String(port),
      CHATGATE_URL: chatgate.url,
      CHATGATE_BOT_SECRET: chatgate.botSecret,
      CHATGATE_APP: APP,
      CHAT_AUDIENCE,
      USERINFO_URL: userinfo,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout.on("data", (d) => logs.push(d.toString()));
  child.stderr.on("data", (d) => logs.push(d.toString()));
  for (const deadline = Date.now() + 20000; !logs.join("").includes("bot listening");) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the bot did not start:\n${logs.join("")}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { url: `http://127.0.0.1:${port}`, logs, stop: () => stopChild(child) };
}

/** botframework-webchat's browser bundle, where npm installed it. */
function webchatBundle() {
  for (const modules of [join(HERE, "node_modules"), join(HERE, "../node_modules")]) {
    const bundle = join(modules, "botframework-webchat/dist/webchat.js");
    if (existsSync(bundle)) return bundle;
  }
  throw new Error("botframework-webchat is not installed: run `npm install` in examples/");
}

/** The host page: index.html with chatgate's URL, and Web Chat's bundle. */
async function startHost({ port, chatgate }) {
  const page = readFileSync(join(HERE, "index.html"), "utf8")
    .replaceAll("__CHATGATE__", chatgate.url)
    .replaceAll("__APP__", APP);
  const webchat = readFileSync(webchatBundle());
  const server = createServer((req, res) => {
    if (req.url === "/" || req.url.startsWith("/?")) {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(page);
    } else if (req.url === "/webchat.js") {
      res.writeHead(200, { "content-type": "text/javascript", "cache-control": "max-age=3600" }).end(webchat);
    } else {
      res.writeHead(404).end("not found");
    }
  });
  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  return { url: `http://localhost:${port}`, close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(() => r()); }) };
}

/**
 * Starts everything. Ports default to 8500-8504; 0 picks free ones (tests).
 * Resolves with { host, chatgate, idp, directLine, bot, stop() }.
 */
export async function startExample({ basePort = 8500 } = {}) {
  const ports = basePort === 0
    ? await Promise.all([0, 1, 2, 3, 4].map(() => freePort()))
    : [0, 1, 2, 3, 4].map((i) => basePort + i);
  const [hostPort, chatgatePort, idpPort, directLinePort, botPort] = ports;
  const bin = chatgateBinary();
  const dir = mkdtempSync(join(tmpdir(), "chatgate-webchat-"));
  const clientSecret = randomBytes(24).toString("base64url");
  const directLineSecret = randomBytes(24).toString("base64url");
  const stops = [];
  try {
    const chatgateUrl = `http://127.0.0.1:${chatgatePort}`;
    const idp = await startIdp({ port: idpPort, redirectUri: `${chatgateUrl}/v1/callback`, clientSecret });
    stops.push(idp.close);
    const directLine = await startDirectLine({
      port: directLinePort,
      secret: directLineSecret,
      botUrl: `http://127.0.0.1:${botPort}/api/messages`,
    });
    stops.push(directLine.close);
    const hostOrigin = `http://localhost:${hostPort}`;
    const chatgate = await startChatgate({ bin, dir, port: chatgatePort, idp, clientSecret, hostOrigin, directLine, directLineSecret });
    stops.push(chatgate.stop);
    const bot = await startBot({ port: botPort, chatgate, userinfo: idp.userinfo });
    stops.push(bot.stop);
    const host = await startHost({ port: hostPort, chatgate });
    stops.push(host.close);
    return {
      host, chatgate, idp, directLine, bot, directLineSecret,
      async stop() {
        for (const stop of stops.reverse()) await stop().catch(() => {});
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    for (const stop of stops.reverse()) await stop().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const example = await startExample({ basePort: Number(process.env.BASE_PORT || 8500) });
  console.log(`
Open ${example.host.url} and sign in with any login and password (e.g. alice / alice).
  chatgate     ${example.chatgate.url}
  IdP          ${example.idp.issuer}   (development logins: never for real users)
  Direct Line  ${example.directLine.url}   (a local stand-in for Azure's)
Ctrl-C stops everything.`);
  const bye = async () => {
    await example.stop();
    process.exit(0);
  };
  process.on("SIGINT", bye);
  process.on("SIGTERM", bye);
}
