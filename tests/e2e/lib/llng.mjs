// LemonLDAP::NG 2.16 (Debian's package) as a second real, OpenID-certified
// identity provider: its portal under nginx over FastCGI, HTTPS with the
// test CA, configured from tests/e2e/llng/lmConf.json (a template filled in
// per run: ports, the client's secret and redirect URIs, a freshly made RSA
// signing key) in a private directory — nothing of the machine's own
// LemonLDAP::NG configuration is read or changed. Users from its Demo
// backend: dwho/dwho, rtyler/rtyler.
//
// See ../../shared/notes/lemonldap-ng.md in the workspace for what was
// measured about this IdP.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import https from "node:https";

const TEMPLATE = fileURLToPath(new URL("../llng/lmConf.json", import.meta.url));
const FASTCGI = "/usr/sbin/llng-fastcgi-server";
const CLI = "/usr/share/lemonldap-ng/bin/lemonldap-ng-cli";
const SESSIONS_CLI = "/usr/share/lemonldap-ng/bin/lemonldap-ng-sessions";
const PORTAL_HTDOCS = "/usr/share/lemonldap-ng/portal/htdocs";
const NGINX = ["/usr/sbin/nginx"].find((p) => existsSync(p)) || "nginx";
// The FastCGI server refuses to run as root; it and nginx's workers run as this user.
const RUN_AS = "www-data";

export const LLNG_USER = { username: "dwho", password: "dwho", name: "Doctor Who", email: "dwho@badwolf.org" };

/** Why LemonLDAP::NG cannot run here, or null. */
export function llngMissing() {
  for (const path of [FASTCGI, CLI, PORTAL_HTDOCS]) {
    if (!existsSync(path)) return `${path} (apt-get install --no-install-recommends lemonldap-ng lemonldap-ng-fastcgi-server nginx-light ...; see .ci/run)`;
  }
  if (spawnSync(NGINX, ["-v"]).status !== 0) return "nginx (apt-get install nginx-light)";
  // The FastCGI server refuses root and must switch to www-data itself.
  if (process.getuid?.() !== 0) return "root (the portal's FastCGI server is started as www-data)";
  return null;
}

function get(url, ca) {
  return new Promise((resolve, reject) => {
    https
      .get(url, { ca }, (res) => {
        let body = "";
        res.on("data", (c) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body }));
      })
      .on("error", reject);
  });
}

/**
 * Starts LemonLDAP::NG at https://{host}:{port}/ (the issuer, with its
 * trailing slash) for one OpenID Connect client: `client` = { id, secret,
 * redirectUri, frontchannelLogoutUri, postLogoutRedirectUri }.
 */
export async function startLlng({ host, port, tls, ca, client }) {
  const dir = mkdtempSync(join(tmpdir(), "chatgate-llng-"));
  chmodSync(dir, 0o755);
  const issuer = `https://${host}:${port}/`;
  for (const sub of ["conf", "sessions", "sessions/lock", "psessions", "psessions/lock", "cache", "run", "nginx"]) {
    mkdirSync(join(dir, sub), { recursive: true });
  }
  // The OIDC signing key: RS256, made now (never committed).
  execFileSync("openssl", ["genrsa", "-out", join(dir, "oidc.key"), "2048"], { stdio: "ignore" });
  execFileSync("openssl", ["rsa", "-in", join(dir, "oidc.key"), "-pubout", "-out", join(dir, "oidc.pub")], { stdio: "ignore" });
  const fill = {
    ISSUER: issuer,
    DOMAIN: host,
    DIR: dir,
    CLIENT_ID: client.id,
    CLIENT_SECRET: client.secret,
    REDIRECT_URI: client.redirectUri,
    FRONTCHANNEL_LOGOUT_URI: client.frontchannelLogoutUri ?? "",
    POST_LOGOUT_REDIRECT_URI: client.postLogoutRedirectUri ?? "",
    PRIVATE_KEY: readFileSync(join(dir, "oidc.key"), "utf8"),
    PUBLIC_KEY: readFileSync(join(dir, "oidc.pub"), "utf8"),
  };
  const conf = JSON.parse(readFileSync(TEMPLATE, "utf8"), (_key, value) =>
    typeof value === "string" ? value.replace(/@@([A-Z_]+)@@/g, (_, name) => fill[name]) : value,
  );
  conf.cfgDate = String(Math.floor(Date.now() / 1000));
  writeFileSync(join(dir, "conf", "lmConf-1.json"), JSON.stringify(conf, null, 2));
  const ini = join(dir, "lemonldap-ng.ini");
  writeFileSync(
    ini,
    `[all]
logLevel = warn
checkTime = 1
[configuration]
type = File
dirName = ${join(dir, "conf")}
localStorage = Cache::FileCache
localStorageOptions = { 'namespace' => 'lemonldap-ng-config', 'default_expires_in' => 600, 'cache_root' => '${join(dir, "cache")}', 'cache_depth' => 3 }
[portal]
staticPrefix = /static
templateDir = /usr/share/lemonldap-ng/portal/templates
languages = en
[handler]
status = 0
useRedirectOnError = 1
`,
  );
  const socket = join(dir, "run", "llng.sock");
  const nginxConf = join(dir, "nginx", "nginx.conf");
  writeFileSync(
    nginxConf,
    `user ${RUN_AS};
worker_processes 1;
pid ${join(dir, "nginx", "nginx.pid")};
error_log ${join(dir, "nginx", "error.log")} warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${join(dir, "nginx", "body")};
  fastcgi_temp_path ${join(dir, "nginx", "fastcgi")};
  proxy_temp_path ${join(dir, "nginx", "proxy")};
  uwsgi_temp_path ${join(dir, "nginx", "uwsgi")};
  scgi_temp_path ${join(dir, "nginx", "scgi")};
  include /etc/nginx/mime.types;
  server {
    listen ${host}:${port} ssl;
    server_name ${host};
    ssl_certificate ${tls.certFile};
    ssl_certificate_key ${tls.keyFile};
    root ${PORTAL_HTDOCS}/;
    if ($uri !~ ^/((static|javascript|favicon).*|.*\\.psgi)) {
      rewrite ^/(.*)$ /index.psgi/$1 break;
    }
    location ~ ^(?<sc>/.*\\.psgi)(?:$|/) {
      include /etc/nginx/fastcgi_params;
      fastcgi_pass unix:${socket};
      fastcgi_param HTTP_HOST $host:$server_port;
      fastcgi_param HTTPS on;
      fastcgi_param LLTYPE psgi;
      fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
      fastcgi_split_path_info ^(.*\\.psgi)(/.*)$;
      fastcgi_param PATH_INFO $fastcgi_path_info;
    }
    location /static/ { alias ${PORTAL_HTDOCS}/static/; }
    location /javascript/ { alias /usr/share/javascript/; }
  }
}
`,
  );
  execFileSync("chown", ["-R", `${RUN_AS}:${RUN_AS}`, dir]);
  const env = { ...process.env, LLNG_DEFAULTCONFFILE: ini, LLNG_DEFAULTLOGGER: "Lemonldap::NG::Common::Logger::Std" };
  const logs = [];
  const fastcgi = spawn(
    FASTCGI,
    ["--foreground", "--socket", socket, "--pid", join(dir, "run", "llng.pid"), "--proc", "2", "--user", RUN_AS, "--group", RUN_AS],
    { env, stdio: ["ignore", "pipe", "pipe"] },
  );
  fastcgi.stdout.on("data", (d) => logs.push(d.toString()));
  fastcgi.stderr.on("data", (d) => logs.push(d.toString()));
  const nginx = spawn(NGINX, ["-c", nginxConf, "-g", "daemon off;"], { stdio: ["ignore", "pipe", "pipe"] });
  nginx.stderr.on("data", (d) => logs.push(d.toString()));
  const stop = async () => {
    for (const child of [nginx, fastcgi]) {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await exited;
      }
    }
  };
  const deadline = Date.now() + 30000;
  for (;;) {
    const failed = fastcgi.exitCode !== null || nginx.exitCode !== null ? "did not start" : Date.now() > deadline ? "did not become ready" : null;
    if (failed) {
      await stop();
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`LemonLDAP::NG ${failed}:\n${logs.join("")}`);
    }
    try {
      const r = await get(`${issuer}.well-known/openid-configuration`, ca);
      if (r.status === 200) break;
    } catch {
      /* not up yet */
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const cli = (args) =>
    execFileSync(CLI, ["-yes", "1", ...args], { env, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  return {
    kind: "lemonldap-ng",
    issuer,
    dir,
    logs,
    user: { username: LLNG_USER.username, password: LLNG_USER.password },
    endSessionUrl: `${issuer}?logout=1`,
    cli,
    /** Deletes every session of the portal (as if an administrator did). */
    deleteAllSessions() {
      for (const kind of ["sessions", "psessions"]) {
        for (const entry of (spawnSync("ls", [join(dir, kind)], { encoding: "utf8" }).stdout || "").split("\n")) {
          if (entry && entry !== "lock") rmSync(join(dir, kind, entry), { force: true, recursive: true });
        }
      }
      rmSync(join(dir, "cache"), { recursive: true, force: true });
      mkdirSync(join(dir, "cache"));
      execFileSync("chown", ["-R", `${RUN_AS}:${RUN_AS}`, join(dir, "cache")]);
    },
    async close() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
