// Debian's Chromium under playwright-core, in a fresh persistent profile whose
// third-party-cookie setting is chosen before launch (see ../../shared/notes).
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

/** `thirdPartyCookies`: "allow" or "block". */
export async function launch({ thirdPartyCookies }) {
  const profile = mkdtempSync(join(tmpdir(), "chatgate-e2e-profile-"));
  mkdirSync(join(profile, "Default"), { recursive: true });
  writeFileSync(
    join(profile, "Default", "Preferences"),
    JSON.stringify({ profile: { cookie_controls_mode: thirdPartyCookies === "block" ? 1 : 0 } }),
  );
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    ignoreHTTPSErrors: true,
    args: [
      "--headless=new",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/**
 * Whether this browser sends a third-party cookie: sets one on the probe's
 * site top-level, then frames the probe from `hostUrl` (another site).
 */
export async function sendsThirdPartyCookies(page, probe, hostUrl) {
  await page.goto(probe.set);
  await page.goto(hostUrl);
  return page.evaluate(
    (src) =>
      new Promise((resolve) => {
        window.addEventListener("message", (e) => {
          if (e.data && "probeCookieSent" in e.data) resolve(e.data.probeCookieSent);
        });
        const f = document.createElement("iframe");
        f.src = src;
        document.body.appendChild(f);
      }),
    probe.read,
  );
}

/** Clicks the host page's sign-in button and returns the popup page. */
export async function openPopup(page) {
  const [popup] = await Promise.all([page.context().waitForEvent("page"), page.click("#signin-popup")]);
  await popup.waitForLoadState("domcontentloaded").catch(() => {}); // it may finish and close at once
  return popup;
}

/**
 * The widget's popup sign-in from the host page: clicks its sign-in button,
 * completes the IdP's forms as `user` (see completeIdpInteraction) and
 * resolves with what the page got (`window.popupResult`: { ok } or { error }).
 */
export async function signInByPopup(page, user) {
  await completeIdpInteraction(await openPopup(page), user);
  return page.evaluate(() => window.popupResult);
}

/** In the IdP popup: fills the login form if shown, then the consent form if shown. */
export async function completeIdpInteraction(popup, { username, password, expectLogin, expectConsent }) {
  const seen = { login: false, consent: false };
  for (let step = 0; step < 4 && !popup.isClosed(); step++) {
    const which = await Promise.race([
      popup.waitForSelector("#login", { timeout: 15000 }).then(() => "login"),
      popup.waitForSelector("#consent", { timeout: 15000 }).then(() => "consent"),
      popup.waitForEvent("close", { timeout: 15000 }).then(() => "closed"),
    ]).catch(() => (popup.isClosed() ? "closed" : "stuck"));
    if (which === "closed") break;
    if (which === "stuck") throw new Error(`popup stuck at ${popup.url()}: ${await popup.content()}`);
    if (which === "login") {
      seen.login = true;
      await popup.fill("#username", username);
      await popup.fill("#password", password);
      await Promise.all([popup.waitForNavigation().catch(() => {}), popup.click("#submit")]);
    } else {
      seen.consent = true;
      await Promise.all([popup.waitForNavigation().catch(() => {}), popup.click("#allow")]);
    }
  }
  if (expectLogin !== undefined && seen.login !== expectLogin) throw new Error(`login form shown: ${seen.login}`);
  if (expectConsent !== undefined && seen.consent !== expectConsent) throw new Error(`consent form shown: ${seen.consent}`);
  return seen;
}
