// A local stand-in for Azure's Direct Line 3.0 channel, enough for Web Chat
// (botframework-directlinejs, polling) and a botbuilder bot on one machine.
// It is NOT Azure's service: one process, memory only, no websockets.
//
// What it does, as Direct Line with Enhanced authentication does:
//   POST /v3/directline/tokens/generate   (Authorization: Bearer <secret>)
//        { user: { id: "dl_..." }, trustedOrigins: [...] }
//        -> { conversationId, token, expires_in }: a conversation bound to
//        that user id; only pages of the trusted origins may use it
//   POST /v3/directline/tokens/refresh    (Bearer <token>) -> a new token
//   POST /v3/directline/conversations     (Bearer <token>) -> the conversation
//   GET  /v3/directline/conversations/:id (Bearer <token>) -> the same (reconnect)
//   POST /v3/directline/conversations/:id/activities  (Bearer <token>)
//        the user's activity; from.id is set to the token's user id whatever
//        the page wrote (a page cannot speak as someone else), then it goes
//        to the bot's /api/messages
//   GET  /v3/directline/conversations/:id/activities?watermark=N
//   POST /v3/conversations/:id/activities[/:replyTo]  the bot's replies
//        (the bot's serviceUrl is this service)
// and, for tests, GET /test/generated: every tokens/generate request seen
// (the Authorization header, the body).
//
// Run alone: DIRECT_LINE_SECRET=... BOT_URL=http://127.0.0.1:3978/api/messages node directline.mjs
import { createServer } from "node:http";
import { randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { fileURLToPath } from "node:url";

const TOKEN_TTL_SECONDS = 3600;

function json(res, status, body, headers = {}) {
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store", ...headers });
  res.end(body === undefined ? "" : JSON.stringify(body));
}

function bearer(req) {
  const m = /^Bearer (.+)$/.exec(req.headers.authorization || "");
  return m ? m[1] : null;
}

function sameSecret(a, b) {
  const x = Buffer.from(String(a));
  const y = Buffer.from(String(b));
  return x.length === y.length && timingSafeEqual(x, y);
}

async function readJson(req) {
  let text = "";
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 256 * 1024) throw new Error("too large");
  }
  return text ? JSON.parse(text) : {};
}

/**
 * Starts the service. `secret`: the channel secret chatgate sends;
 * `botUrl`: the bot's messaging endpoint. Resolves with { url, domain,
 * generated, conversations, close() }.
 */
export async function startDirectLine({ host = "127.0.0.1", port = 0, secret, botUrl }) {
  const conversations = new Map(); // id -> { id, userId, trustedOrigins, activities }
  const tokens = new Map(); // token -> { conversationId, userId, expiresAt }
  const generated = [];
  const requests = []; // "METHOD path -> status", for a test's failure message
  let base = "";

  function issue(conversation) {
    const token = randomBytes(32).toString("base64url");
    tokens.set(token, {
      conversationId: conversation.id,
      userId: conversation.userId,
      expiresAt: Date.now() + TOKEN_TTL_SECONDS * 1000,
    });
    return { conversationId: conversation.id, token, expires_in: TOKEN_TTL_SECONDS };
  }

  // The conversation a request's token opens, if the token is live and the
  // page (if any) is of a trusted origin.
  function authorized(req, res, conversationId) {
    const grant = tokens.get(bearer(req));
    if (!grant || grant.expiresAt < Date.now()) {
      json(res, 403, { error: { code: "TokenExpired", message: "the token is unknown or expired" } });
      return null;
    }
    const conversation = conversations.get(grant.conversationId);
    if (conversationId && conversationId !== conversation.id) {
      json(res, 403, { error: { code: "BadArgument", message: "the token is for another conversation" } });
      return null;
    }
    const origin = req.headers.origin;
    if (origin && !conversation.trustedOrigins.includes(origin)) {
      json(res, 403, { error: { code: "BadArgument", message: `origin ${origin} is not trusted` } });
      return null;
    }
    return conversation;
  }

  function append(conversation, activity) {
    const stored = {
      ...activity,
      id: `${conversation.id}|${String(conversation.activities.length).padStart(7, "0")}`,
      timestamp: new Date().toISOString(),
      channelId: "directline",
      conversation: { id: conversation.id },
      serviceUrl: base,
    };
    conversation.activities.push(stored);
    return stored;
  }

  async function toBot(activity) {
    const r = await fetch(botUrl, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...activity, recipient: { id: "bot", name: "bot", role: "bot" } }),
    });
    if (!r.ok) throw new Error(`the bot answered ${r.status}`);
  }

  const server = createServer(async (req, res) => {
    const url = new URL(req.url, base);
    const path = url.pathname.replace(/\/+$/, "");
    res.on("finish", () => requests.push(`${req.method} ${path} -> ${res.statusCode}`));
    // CORS: Web Chat calls from the page; the origin check is `authorized`'s.
    if (req.headers.origin) {
      res.setHeader("access-control-allow-origin", req.headers.origin);
      res.setHeader("access-control-allow-headers", req.headers["access-control-request-headers"] || "authorization, content-type");
      res.setHeader("access-control-allow-methods", "GET, POST");
      res.setHeader("vary", "origin");
    }
    if (req.method === "OPTIONS") return json(res, 204);
    try {
      if (req.method === "POST" && path === "/v3/directline/tokens/generate") {
        const body = await readJson(req);
        generated.push({ authorization: req.headers.authorization || null, body });
        if (!sameSecret(bearer(req) ?? "", secret)) {
          return json(res, 403, { error: { code: "BadArgument", message: "the secret is wrong" } });
        }
        const userId = body?.user?.id;
        if (typeof userId !== "string" || !userId.startsWith("dl_")) {
          return json(res, 400, { error: { code: "BadArgument", message: "user.id must start with dl_" } });
        }
        const conversation = {
          id: randomUUID(),
          userId,
          trustedOrigins: Array.isArray(body.trustedOrigins) ? body.trustedOrigins : [],
          activities: [],
        };
        conversations.set(conversation.id, conversation);
        return json(res, 200, issue(conversation));
      }
      if (req.method === "POST" && path === "/v3/directline/tokens/refresh") {
        const conversation = authorized(req, res);
        if (conversation) json(res, 200, issue(conversation));
        return;
      }
      let m;
      if ((req.method === "POST" && path === "/v3/directline/conversations") ||
          (req.method === "GET" && (m = /^\/v3\/directline\/conversations\/([^/]+)$/.exec(path)))) {
        const conversation = authorized(req, res, m?.[1]);
        if (conversation) json(res, 201, { ...issue(conversation), token: bearer(req) });
        return;
      }
      if ((m = /^\/v3\/directline\/conversations\/([^/]+)\/activities$/.exec(path))) {
        const conversation = authorized(req, res, m[1]);
        if (!conversation) return;
        if (req.method === "GET") {
          const watermark = Number(url.searchParams.get("watermark") || 0);
          return json(res, 200, {
            activities: conversation.activities.slice(watermark),
            watermark: String(conversation.activities.length),
          });
        }
        const activity = await readJson(req);
        // Enhanced authentication: the user is whom the token names.
        const stored = append(conversation, {
          ...activity,
          from: { ...(activity.from || {}), id: conversation.userId, role: "user" },
        });
        await toBot(stored);
        return json(res, 200, { id: stored.id });
      }
      if (req.method === "POST" && (m = /^\/v3\/conversations\/([^/]+)\/activities(?:\/[^/]+)?$/.exec(path))) {
        const conversation = conversations.get(decodeURIComponent(m[1]));
        if (!conversation) return json(res, 404, { error: { code: "BadArgument", message: "no such conversation" } });
        const activity = await readJson(req);
        const stored = append(conversation, { ...activity, from: { id: "bot", name: "bot", role: "bot", ...activity.from } });
        return json(res, 200, { id: stored.id });
      }
      if (req.method === "GET" && path === "/test/generated") return json(res, 200, generated);
      json(res, 404, { error: { code: "NotFound", message: `${req.method} ${path}` } });
    } catch (err) {
      json(res, 502, { error: { code: "ServiceError", message: String(err.message || err) } });
    }
  });
  await new Promise((resolve) => server.listen(port, host, resolve));
  base = `http://${host}:${server.address().port}`;
  return {
    url: base,
    domain: `${base}/v3/directline`,
    generated,
    conversations,
    requests,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const env = process.env;
  const dl = await startDirectLine({
    port: Number(env.PORT || 3001),
    secret: env.DIRECT_LINE_SECRET,
    botUrl: env.BOT_URL || "http://127.0.0.1:3978/api/messages",
  });
  console.log(`Direct Line stand-in at ${dl.url}`);
}
