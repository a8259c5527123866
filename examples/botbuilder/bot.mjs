// A Bot Framework bot (botbuilder's CloudAdapter) that gets the signed-in
// user's access token from chatgate with the standard user-token calls —
// UserTokenClient.getUserToken / signOutUser — because chatgate serves the
// Azure Bot Service token API under {chatgate}/bf.
//
// What differs from a bot using Azure's token service is configuration and
// one credentials class:
//   - OAuthUrl = {chatgate}/bf, and the OAuth connection name is the chatgate
//     app id;
//   - ChatgateCredentialsFactory sends the chatgate bot secret to chatgate only
//     (every other request is signed by the bot's usual credentials);
//   - the user id is the chatgate user id: Web Chat attaches the chat token to
//     each activity (channelData.chatToken), and the bot verifies it against
//     chatgate's JWKS and uses its `sub` — never activity.from.id, which the
//     page chooses; except a Direct Line user id (dl_...) that chatgate bound
//     the conversation's Direct Line token to ([apps.direct_line], see
//     examples/webchat): Direct Line sets that from.id itself, and chatgate
//     maps it back to the user;
//   - the chat token also goes to chatgate as the magic code of getUserToken:
//     chatgate hands out a user's token only with proof that the user is
//     present (their chat token), so a bot cannot be talked into fetching
//     somebody else's.
//
// Environment:
//   CHATGATE_URL          chatgate's public URL (the chat tokens' issuer)
//   CHATGATE_BOT_SECRET   from `chatgate bots create --app <app>`
//   CHATGATE_APP          the app id (= the OAuth connection name)
//   CHAT_AUDIENCE         the app's chat_audience
//   USERINFO_URL          the IdP's userinfo endpoint (the bot calls it with the token)
//   MicrosoftAppId, MicrosoftAppPassword, MicrosoftAppType, MicrosoftAppTenantId
//                         the bot's own Bot Framework credentials; leave them out
//                         to run locally without authentication (as the Bot
//                         Framework Emulator does)
//   PORT                  default 3978
//
// Run: npm install && node bot.mjs   (Node 20+)
import { createServer } from "node:http";
import {
  ActivityHandler,
  CloudAdapter,
  ConfigurationBotFrameworkAuthentication,
  ConfigurationServiceClientCredentialFactory,
} from "botbuilder";
import { ServiceClientCredentialsFactory } from "botframework-connector";
import { createRemoteJWKSet, jwtVerify } from "jose";

const env = process.env;
const CHATGATE_URL = env.CHATGATE_URL.replace(/\/$/, "");
const APP = env.CHATGATE_APP;

/**
 * The bot's usual credentials, plus the chatgate bot secret on requests to
 * chatgate's token API (and nowhere else).
 */
class ChatgateCredentialsFactory extends ServiceClientCredentialsFactory {
  constructor(inner, tokenApiUrl, botSecret) {
    super();
    this.inner = inner;
    this.tokenApiUrl = `${tokenApiUrl}/`;
    this.botSecret = botSecret;
  }
  isValidAppId(appId) {
    return this.inner.isValidAppId(appId);
  }
  isAuthenticationDisabled() {
    return this.inner.isAuthenticationDisabled();
  }
  async createCredentials(appId, audience, loginEndpoint, validateAuthority) {
    const usual = await this.inner.createCredentials(appId, audience, loginEndpoint, validateAuthority);
    const { tokenApiUrl, botSecret } = this;
    return {
      async signRequest(webResource) {
        if (webResource.url.startsWith(tokenApiUrl)) {
          webResource.headers.set("authorization", `Bearer ${botSecret}`);
          return webResource;
        }
        return usual.signRequest(webResource);
      },
    };
  }
}

const config = {
  MicrosoftAppId: env.MicrosoftAppId ?? "",
  MicrosoftAppPassword: env.MicrosoftAppPassword ?? "",
  MicrosoftAppType: env.MicrosoftAppType ?? "MultiTenant",
  MicrosoftAppTenantId: env.MicrosoftAppTenantId ?? "",
  OAuthUrl: `${CHATGATE_URL}/bf`,
};
const credentials = new ChatgateCredentialsFactory(
  new ConfigurationServiceClientCredentialFactory(config),
  `${CHATGATE_URL}/bf`,
  env.CHATGATE_BOT_SECRET,
);
const adapter = new CloudAdapter(new ConfigurationBotFrameworkAuthentication(config, credentials));
adapter.onTurnError = async (context, error) => {
  console.error("bot error:", error);
  await context.sendActivity("Sorry, something went wrong.");
};

const chatgateKeys = createRemoteJWKSet(new URL(`${CHATGATE_URL}/.well-known/jwks.json`));

class Bot extends ActivityHandler {
  constructor() {
    super();
    this.onMessage(async (context, next) => {
      await context.sendActivity(await this.answer(context));
      await next();
    });
  }

  async answer(context) {
    const who = await this.user(context);
    if (who.refusal) return who.refusal;
    const tokens = context.turnState.get(context.adapter.UserTokenClientKey);
    const channelId = context.activity.channelId;
    if ((context.activity.text || "").trim().toLowerCase() === "sign out") {
      await tokens.signOutUser(who.userId, APP, channelId);
      return "Signed out: chatgate revoked your tokens.";
    }
    // With a chat token, the token is the proof chatgate asks for (the
    // "magic code"); a Direct Line user id is its own proof.
    const token = await tokens.getUserToken(who.userId, APP, channelId, who.chatToken);
    if (!token?.token) return "You are not signed in (chatgate holds no token for you).";
    const info = await fetch(env.USERINFO_URL, { headers: { authorization: `Bearer ${token.token}` } });
    if (!info.ok) return `The identity provider refused the token (${info.status}).`;
    const profile = await info.json();
    return `Hi ${profile.name} <${profile.email}>! (${who.shown}; token valid until ${token.expiration})`;
  }

  /**
   * Whom the activity comes from, by what chatgate accepts as proof:
   *   - the chat token Web Chat attached (channelData.chatToken), verified
   *     against chatgate's keys: its `sub`;
   *   - else a Direct Line user id chatgate bound the conversation's token to
   *     (`dl_...`, [apps.direct_line]): Direct Line (with Enhanced
   *     authentication) puts it in from.id, and chatgate knows whose it is.
   * Any other from.id is the page's say-so: nothing.
   */
  async user(context) {
    const chatToken = context.activity.channelData?.chatToken;
    if (chatToken) {
      try {
        const { payload } = await jwtVerify(chatToken, chatgateKeys, {
          issuer: CHATGATE_URL,
          audience: env.CHAT_AUDIENCE,
        });
        return { userId: payload.sub, chatToken, shown: payload.sub };
      } catch (err) {
        return { refusal: `That chat token does not verify (${err.code || err.message}).` };
      }
    }
    const fromId = context.activity.from?.id ?? "";
    if (context.activity.channelId === "directline" && fromId.startsWith("dl_")) {
      return { userId: fromId, chatToken: undefined, shown: `Direct Line user ${fromId}` };
    }
    return { refusal: "Sign in to chat first (no chat token came with the message)." };
  }
}
const bot = new Bot();

// CloudAdapter.process wants express-style req/res; a few lines of node:http do.
const server = createServer(async (req, res) => {
  if (req.url !== "/api/messages") {
    res.statusCode = 404;
    return res.end();
  }
  let text = "";
  for await (const chunk of req) text += chunk;
  try {
    req.body = JSON.parse(text || "{}");
  } catch {
    res.statusCode = 400;
    return res.end("not JSON");
  }
  res.status = (code) => {
    res.statusCode = code;
    return res;
  };
  res.header = (name, value) => {
    res.setHeader(name, value);
    return res;
  };
  res.send = (body) => {
    if (typeof body === "object") res.setHeader("content-type", "application/json");
    res.write(typeof body === "string" ? body : JSON.stringify(body));
    return res;
  };
  await adapter.process(req, res, (context) => bot.run(context));
});
server.listen(Number(env.PORT || 3978), "127.0.0.1", () => {
  console.log(`bot listening on http://127.0.0.1:${server.address().port}/api/messages`);
});
