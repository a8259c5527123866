// Where a first silent sign-in's time goes, request by request: a diagnostic
// beside bench-renewal.mjs, measured, not asserted. Each round signs out
// locally (the IdP's session stays), reloads the page, and times
// ChatGate.signIn and then oidc-client-ts's signinSilent; for each it prints
// every request the browser made in that time, relative to the call: when it
// started, when it was sent, when the answer's first byte came and when it
// ended (Chromium's own resource timing, in ms).
//
//   node tests/e2e/timeline-first-visit.mjs [rounds] [--server]   (default 6; the first two are warm-up)
//
// With --server it also prints chatgate's own log lines of that time (its
// request log at debug: when each request started and finished, and how
// long chatgate took), on the same clock. With
// CHATGATE_BENCH_POSTGRES_URL (an admin URL) chatgate runs on PostgreSQL, in
// a database of the run's own.
//
// A request that ends without a response (the callback's 204 to the frame,
// which aborts the frame's navigation) shows as "no response".
import { startWorld } from "./lib/world.mjs";
import { withPostgres } from "./lib/postgres.mjs";
import { launch, signInByPopup, completeIdpInteraction } from "./lib/browser.mjs";

const args = process.argv.slice(2);
const ROUNDS = Number(args.find((a) => /^\d+$/.test(a)) || 6);
const SERVER = args.includes("--server");
if (SERVER) process.env.CHATGATE_E2E_LOG_LEVEL = "info,chatgate=debug,tower_http=debug";
async function timeline(databaseUrl) {
  const world = await startWorld({ spa: true, chatgateToml: "[rate_limit]\nper_second = 100000\nburst = 100000", databaseUrl });
  const browser = await launch({ thirdPartyCookies: "allow" });
  const requests = [];
  try {
    const page = await browser.context.newPage();
    browser.context.on("requestfinished", (r) => requests.push({ r, timing: r.timing() }));
    browser.context.on("requestfailed", (r) => requests.push({ r, timing: r.timing(), failed: true }));
    await page.goto(world.host.url);
    // Signed in through chatgate and through oidc-client-ts (login, consent).
    const first = await signInByPopup(page, world.idp.user);
    if (!first.ok) throw new Error(`sign-in failed: ${JSON.stringify(first)}`);
    const makeSpa = () => page.evaluate(() => { window.spa = new oidc.UserManager(window.spaSettings); });
    await makeSpa();
    await page.evaluate(() => {
      const button = document.createElement("button");
      button.id = "spa-signin";
      button.onclick = () => { window.spaPopup = window.spa.signinPopup().then((u) => !!u.access_token, String); };
      document.body.appendChild(button);
    });
    const [spaPopup] = await Promise.all([browser.context.waitForEvent("page"), page.click("#spa-signin")]);
    await completeIdpInteraction(spaPopup, world.idp.user);
    if ((await page.evaluate(() => window.spaPopup)) !== true) throw new Error("oidc-client-ts did not sign in");

    for (let round = 0; round < ROUNDS; round++) {
      await page.evaluate(() => ChatGate.signOut(window.chatgateOptions));
      await page.goto(world.host.url);
      await makeSpa();
      await page.waitForTimeout(100);
      for (const [name, src] of [
        ["chatgate, first visit", "() => ChatGate.signIn(window.chatgateOptions)"],
        ["oidc-client-ts signinSilent", "() => window.spa.signinSilent()"],
      ]) {
        requests.length = 0;
        world.chatgate.logs.length = 0;
        const [t0, t1] = await page.evaluate(async (src) => {
          const run = eval(`(${src})`);
          const at = () => performance.timeOrigin + performance.now();
          const a = at();
          await run();
          return [a, at()];
        }, src);
        await page.waitForTimeout(200);
        if (round < 2) continue;
        console.log(`${name}, round ${round - 1}: ${(t1 - t0).toFixed(1)} ms`);
        console.log("    start     sent    first byte    end");
        for (const { r, timing: t, failed } of requests.sort((a, b) => a.timing.startTime - b.timing.startTime)) {
          if (t.startTime < t0 - 5 || t.startTime > t1 + 5) continue;
          const at = (x) => (x >= 0 && !failed ? (t.startTime + x - t0).toFixed(1) : "").padStart(9);
          const what = `${r.method()} ${r.url().replace(/\?.*/, "")}${failed ? " (no response)" : ""}`;
          console.log(`${(t.startTime - t0).toFixed(1).padStart(9)}${at(t.requestStart)}${at(t.responseStart)}${at(t.responseEnd)}   ${what}`);
        }
        if (SERVER) {
          console.log("    chatgate's log, ms after the call:");
          for (const line of world.chatgate.logs.join("").split("\n")) {
            const plain = line.replace(/\x1b\[[0-9;]*m/g, "");
            const at = Date.parse(plain.slice(0, 27));
            if (!(at >= t0 - 5 && at <= t1 + 5)) continue;
            // Microseconds: the log's own are finer than Date.parse.
            const micros = Number(plain.slice(20, 26)) / 1000 - Math.floor(Number(plain.slice(20, 23)));
            console.log(`${(at + micros - t0).toFixed(1).padStart(9)}   ${plain.slice(28).replace(/\s+/g, " ").slice(0, 150)}`);
          }
        }
      }
    }
  } finally {
    await browser.close();
    await world.stop();
  }
}

const postgres = process.env.CHATGATE_BENCH_POSTGRES_URL;
if (postgres) await withPostgres(postgres, timeline);
else await timeline();
