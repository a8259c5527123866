// `chatgate demo` itself, driven in a browser the way a newcomer would use it:
// open the shop, sign in through the popup, reload and get signed in silently,
// chat with the bot (which reads the user's token through chatgate), sign out,
// sign out everywhere (at the IdP too), and see the bot's events.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startDemo } from "./lib/demo.mjs";
import { CHROMIUM } from "./lib/browser.mjs";

const HERE = fileURLToPath(new URL(".", import.meta.url));
const ARTIFACTS = resolve(HERE, "artifacts");
// The Python example bot runs in tests/e2e/.venv (made by scripts/test.sh / .ci/run).
const PYTHON = [resolve(HERE, ".venv/bin/python"), "python3"].find((p) => p === "python3" || existsSync(p));

let demo;

before(async () => {
  demo = await startDemo();
});

after(async () => {
  if (!demo) return;
  const code = await demo.stop();
  assert.equal(code, 0, `the demo stops cleanly on Ctrl-C:\n${demo.output.join("")}`);
  assert.match(demo.output.join(""), /stopping the demo/);
});

describe("chatgate demo", () => {
  it("a newcomer signs in through the popup, is signed in silently after a reload, chats with the bot and signs out", async () => {
    assert.match(demo.output.join(""), /the shop \(open this\)\s+http:\/\/localhost:\d+/);
    // A stock profile: no cookie settings changed.
    const profile = mkdtempSync(join(tmpdir(), "chatgate-demo-profile-"));
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1200, height: 800 },
      args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"],
    });
    try {
      const page = await context.newPage();
      await page.goto(demo.shop);
      const status = page.locator("#chat-status");
      // First visit: the IdP has never seen this browser.
      await status.filter({ hasText: "Sign in to chat" }).waitFor({ timeout: 20000 });
      assert.match(await status.textContent(), /login_required/);

      const [popup] = await Promise.all([context.waitForEvent("page"), page.click("#signin")]);
      await popup.waitForSelector("#login");
      await popup.fill("#username", "alice");
      await popup.fill("#password", "alice");
      await Promise.all([popup.waitForNavigation(), popup.click("#submit")]);
      await popup.waitForSelector("#consent");
      await popup.click("#allow");
      await status.filter({ hasText: "Signed in as Alice Example" }).waitFor({ timeout: 20000 });

      // A reload signs in silently.
      await page.reload();
      await status.filter({ hasText: "Signed in as Alice Example" }).waitFor({ timeout: 20000 });
      await page.locator(".msg.system", { hasText: "Signed in silently" }).waitFor();

      // The bot answers with what the IdP says about the user.
      await page.fill("#message", "Where is my order?");
      await page.click("#send");
      const reply = page.locator(".msg.bot").first();
      await reply.waitFor({ timeout: 20000 });
      const text = await reply.textContent();
      assert.match(text, /Hi Alice Example!/);
      assert.match(text, /alice@example\.com/);
      assert.match(text, /Where is my order\?/);

      mkdirSync(ARTIFACTS, { recursive: true });
      const shot = join(ARTIFACTS, "demo-signed-in.png");
      await page.locator("#chat").screenshot({ path: shot });
      console.log(`screenshot of the signed-in widget: ${shot}`);

      // The standalone example bot (examples/bot.py) does the same with a chat token.
      const chatToken = await page.evaluate(
        (broker) => ChatGate.signIn({ broker, app: "support" }).then((r) => r.chat_token),
        demo.chatgate,
      );
      const hasDeps = spawnSync(PYTHON, ["-c", "import jwt, requests, cryptography"]).status === 0;
      if (!hasDeps) {
        const why = `the Python example needs pyjwt[crypto] and requests (${PYTHON}); pip install -r tests/e2e/requirements.txt`;
        if (process.env.CHATGATE_TEST_REQUIRE_PYTHON === "1") throw new Error(why);
        console.log(`SKIPPED the Python example bot: ${why}`);
      } else {
        const run = spawnSync(
          PYTHON,
          [resolve(HERE, "../../examples/bot.py"), "--chatgate", demo.chatgate, "--audience", `${demo.shop}/bot`, "--idp", demo.idp, chatToken],
          { env: { ...process.env, CHATGATE_BOT_SECRET: readFileSync(join(demo.dir, "data", "bot.secret"), "utf8").trim() }, encoding: "utf8" },
        );
        assert.equal(run.status, 0, run.stderr);
        const out = JSON.parse(run.stdout);
        assert.equal(out.user_id, "demo:alice");
        assert.equal(out.name, "Alice Example");
        assert.equal(out.email, "alice@example.com");
      }

      await page.click("#signout");
      await status.filter({ hasText: "Sign in to chat" }).waitFor({ timeout: 20000 });
      await page.locator(".msg.system", { hasText: "revoked" }).waitFor();
      assert.equal(await page.isDisabled("#message"), true);

      // Sign in again (the IdP still knows the browser), then "Sign out
      // everywhere": signed out at the IdP in a popup too.
      const [again] = await Promise.all([context.waitForEvent("page"), page.click("#signin")]);
      await again.waitForEvent("close", { timeout: 20000 }).catch(() => {});
      await status.filter({ hasText: "Signed in as Alice Example" }).waitFor({ timeout: 20000 });
      const [signOutPopup] = await Promise.all([context.waitForEvent("page"), page.click("#signout-everywhere")]);
      await signOutPopup.waitForEvent("close", { timeout: 20000 }).catch(() => {});
      await page.locator(".msg.system", { hasText: "Signed out here and at the identity provider" }).waitFor({ timeout: 20000 });
      // The IdP session is gone: a reload's silent sign-in needs the user.
      await page.reload();
      await status.filter({ hasText: "login_required" }).waitFor({ timeout: 20000 });

      // The sample bot printed the events chatgate sent it, signature checked.
      const events = await (await fetch(`${demo.shop}/bot/events`)).json();
      const kinds = events.events.map((e) => `${e.type}${e.data.reason ? `:${e.data.reason}` : ""}`);
      assert.ok(kinds.includes("user.signed_in"), JSON.stringify(kinds));
      assert.ok(kinds.includes("user.signed_out:widget"), JSON.stringify(kinds));
      assert.match(demo.output.join(""), /bot: event evt_\S+ user\.signed_out for demo:alice in app support/);
      assert.doesNotMatch(demo.output.join(""), /refused an event delivery/);
    } finally {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    }
  });
});
