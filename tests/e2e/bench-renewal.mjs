// Sign-in latency in a real browser, measured, not asserted: how long a
// first silent sign-in (an IdP session, nothing of chatgate's on this site
// yet) and a silent renewal of a signed-in user take with chatgate's widget — by fetch
// (POST /v1/session/token, the default) and by the hidden iframe (the previous
// way) — against oidc-client-ts's signinSilent (a hidden iframe to the IdP,
// then a token request), all against the same oidc-provider in the same
// headless Chromium run.
//
//   node tests/e2e/bench-renewal.mjs [rounds] [--dpop] [--userinfo]   (default 20; after scripts/test.sh built chatgate)
//
// With --userinfo oidc-client-ts also asks the IdP's userinfo (its
// loadUserInfo), so that both end with the user's name and email, as
// chatgate's chat token does (the test IdP puts them only in userinfo); by
// default it does not (oidc-client-ts's default).
//
// On SQLite, and then on PostgreSQL too with
// CHATGATE_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres
// (an admin URL: the run creates a database of its own there and drops it).
// The browser and the servers share every CPU; CHATGATE_BENCH_SPLIT=1 puts
// the browser on CPU 0 and the servers (the IdP, the host page's server,
// chatgate) on CPU 1, for both contenders alike (a diagnostic: see
// lib/cpus.mjs).
//
// With --dpop the app binds chat tokens to the browser's key
// (bind_chat_tokens = "dpop"), and one more run renews with chatgate's cookie
// deleted first (outside the timing): by the key alone.
// Prints the median and p90 of each, and their ratios to signinSilent.
import { startWorld } from "./lib/world.mjs";
import { withPostgres } from "./lib/postgres.mjs";
import { describe, pinBrowser, splitCpus } from "./lib/cpus.mjs";
import { launch, signInByPopup, completeIdpInteraction } from "./lib/browser.mjs";

const args = process.argv.slice(2);
const DPOP = args.includes("--dpop");
const USERINFO = args.includes("--userinfo");
const ROUNDS = Number(args.find((a) => /^\d+$/.test(a)) || 20);

function stats(ms) {
  const sorted = [...ms].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { median: at(0.5), p90: at(0.9) };
}

// With CHATGATE_BENCH_SPLIT=1, the browser on one CPU and the servers on
// another (see lib/cpus.mjs).
const SPLIT = splitCpus();

async function bench(database, databaseUrl) {
  // Every renewal comes from one address, several a second: no rate limit.
  const world = await startWorld({
    spa: { loadUserInfo: USERINFO },
    appToml: DPOP ? 'bind_chat_tokens = "dpop"' : "",
    chatgateToml: "[rate_limit]\nper_second = 100000\nburst = 100000",
    databaseUrl,
  });
  const brokerHost = new URL(world.chatgate.url).hostname;
  const browser = await launch({ thirdPartyCookies: "allow" });
  if (SPLIT) pinBrowser([world.chatgate.pid]);
  try {
    const page = await browser.context.newPage();
    await page.goto(world.host.url);
    // Signed in through chatgate (login and consent at the IdP)...
    const first = await signInByPopup(page, world.idp.user);
    if (!first.ok) throw new Error(`sign-in failed: ${JSON.stringify(first)}`);
    // ...and through oidc-client-ts (the IdP session exists: consent only).
    const makeSpa = () => page.evaluate(() => {
      window.spa = new oidc.UserManager(window.spaSettings);
      // A button of its own: the host page's sign-in button is chatgate's.
      const button = document.createElement("button");
      button.id = "spa-signin";
      button.textContent = "Sign in with oidc-client-ts";
      button.onclick = () => {
        window.spaPopup = window.spa.signinPopup().then((u) => ({ ok: !!u.access_token }), (e) => ({ err: String(e) }));
      };
      document.body.appendChild(button);
    });
    await makeSpa();
    const [spaPopup] = await Promise.all([browser.context.waitForEvent("page"), page.click("#spa-signin")]);
    await completeIdpInteraction(spaPopup, world.idp.user);
    const spaFirst = await page.evaluate(() => window.spaPopup);
    if (!spaFirst.ok) throw new Error(`oidc-client-ts sign-in failed: ${JSON.stringify(spaFirst)}`);

    // A first visit: the user has a session at the IdP but none at chatgate
    // on this site (no chatgate cookie, no browser key): the page is loaded
    // afresh with both gone (outside the timing), then signs in silently.
    const FIRST_VISIT = "chatgate, first visit";
    const runs = {
      [FIRST_VISIT]: () => ChatGate.signIn(window.chatgateOptions),
      "chatgate, by fetch": () => ChatGate.signIn(window.chatgateOptions),
      "chatgate, by iframe": () => ChatGate.signIn({ ...window.chatgateOptions, loginHint: "alice@example.com" }),
      "oidc-client-ts signinSilent": () => window.spa.signinSilent(),
    };
    // Renewed by the key alone: chatgate's cookie is deleted before each run.
    const KEY_ONLY = "chatgate, by fetch, no cookie";
    if (DPOP) runs[KEY_ONLY] = () => ChatGate.signIn(window.chatgateOptions);
    const results = {};
    for (const [name] of Object.entries(runs)) results[name] = [];
    // Interleaved rounds, one warm-up each, so drift hits all three alike.
    for (let round = -1; round < ROUNDS; round++) {
      for (const [name, fn] of Object.entries(runs)) {
        if (name === KEY_ONLY) await browser.context.clearCookies({ domain: brokerHost });
        if (name === FIRST_VISIT) {
          // A local sign-out ends chatgate's session (its partitioned cookie
          // too, which clearing cookies by domain can miss) and forgets the
          // browser key; the IdP's session stays.
          await page.evaluate(() => ChatGate.signOut(window.chatgateOptions));
          await page.goto(world.host.url);
          await makeSpa();
          // The page has loaded and settled, as for every other run.
          await page.waitForTimeout(100);
        }
        const ms = await page.evaluate(async (src) => {
          const run = eval(`(${src})`);
          const t0 = performance.now();
          const r = await run();
          if (!r || !(r.chat_token || r.access_token)) throw new Error("no token");
          return performance.now() - t0;
        }, fn.toString());
        if (round >= 0) results[name].push(ms);
        // What a sign-in leaves in flight (the key's confirmation) settles
        // before the next run, as it would long before a real renewal.
        await page.waitForTimeout(100);
      }
    }
    const base = stats(results["oidc-client-ts signinSilent"]).median;
    console.log(`${database}: silent sign-in and renewal, ${ROUNDS} rounds, headless Chromium, oidc-provider on loopback${DPOP ? ", chat tokens bound to the browser's key" : ""}${USERINFO ? ", oidc-client-ts loads userinfo" : ""}; ${describe(SPLIT)}`);
    console.log("                                median ms   p90 ms   median / signinSilent");
    for (const [name, ms] of Object.entries(results)) {
      const s = stats(ms);
      console.log(`  ${name.padEnd(30)}${s.median.toFixed(1).padStart(9)}${s.p90.toFixed(1).padStart(9)}${(s.median / base).toFixed(2).padStart(12)}×`);
    }
  } finally {
    await browser.close();
    await world.stop();
  }
}

await bench("SQLite");
const postgres = process.env.CHATGATE_BENCH_POSTGRES_URL;
if (postgres) await withPostgres(postgres, (url) => bench("PostgreSQL", url));
else console.log("PostgreSQL: skipped (set CHATGATE_BENCH_POSTGRES_URL to an admin URL)");
