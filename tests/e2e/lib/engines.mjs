// The three browser engines Debian ships, each in its default cookie setting
// and its strictest third-party-cookie setting, behind one small interface,
// so the same sign-in scenarios run in all of them (see
// ../../shared/notes/browser-engines.md in the workspace):
//
//   Chromium     playwright-core (CDP), a persistent profile whose cookie
//                setting is written before launch
//   Firefox ESR  puppeteer-core over WebDriver BiDi, prefs at launch
//   WebKitGTK    WebKitWebDriver (W3C WebDriver classic) + MiniBrowser,
//                under Xvfb
//
// Never a downloaded browser: each engine is the Debian package's binary.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import puppeteer from "puppeteer-core";
import { WebDriverSession } from "./webdriver.mjs";
import { freePort } from "./ports.mjs";

export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
export const FIREFOX = process.env.FIREFOX_PATH || "/usr/bin/firefox-esr";
export const WEBKIT_DRIVER = process.env.WEBKIT_DRIVER_PATH || "/usr/bin/WebKitWebDriver";
const MINIBROWSER_CANDIDATES = [
  "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser",
  "/usr/lib/aarch64-linux-gnu/webkit2gtk-4.1/MiniBrowser",
  "/usr/libexec/webkit2gtk-4.1/MiniBrowser",
];

/** Where MiniBrowser lives (`dpkg -L libwebkit2gtk-4.1-0 | grep MiniBrowser`). */
export function miniBrowser() {
  if (process.env.MINIBROWSER_PATH) return process.env.MINIBROWSER_PATH;
  const known = MINIBROWSER_CANDIDATES.find((p) => existsSync(p));
  if (known) return known;
  const listed = spawnSync("dpkg", ["-L", "libwebkit2gtk-4.1-0"], { encoding: "utf8" }).stdout || "";
  return listed.split("\n").find((l) => l.endsWith("/MiniBrowser")) || null;
}

/**
 * Every engine and setting the suite covers. `thirdPartyCookies`: whether a
 * cross-site iframe gets the cookies its site set top-level (`sent`), and
 * whether it may keep a cookie of its own, partitioned (`kept`) — checked by
 * a probe in each run, so a setting that silently failed to apply is caught.
 */
export const TARGETS = [
  {
    engine: "chromium",
    setting: "default",
    label: "Chromium, third-party cookies allowed",
    thirdPartyCookies: { sent: true, kept: true },
  },
  {
    engine: "chromium",
    setting: "block-third-party",
    label: "Chromium, third-party cookies blocked",
    thirdPartyCookies: { sent: false, kept: true },
  },
  {
    engine: "firefox",
    setting: "default",
    label: "Firefox ESR, default (Total Cookie Protection)",
    thirdPartyCookies: { sent: false, kept: true },
  },
  {
    engine: "firefox",
    setting: "block-third-party",
    label: "Firefox ESR, all third-party cookies blocked",
    thirdPartyCookies: { sent: false, kept: false },
  },
  {
    engine: "webkit",
    setting: "default",
    label: "WebKitGTK, default (no third-party cookies)",
    // WebKit's "no third-party" policy refuses new cookies in a frame, but
    // sends those its site set top-level.
    thirdPartyCookies: { sent: true, kept: false },
  },
  {
    engine: "webkit",
    setting: "itp",
    label: "WebKitGTK, Intelligent Tracking Prevention on",
    thirdPartyCookies: { sent: false, kept: false },
  },
];

/** Whether an engine's binaries are on this machine (else: why not). */
export function missing(engine) {
  if (engine === "chromium") return existsSync(CHROMIUM) ? null : `${CHROMIUM} (apt-get install chromium)`;
  if (engine === "firefox") return existsSync(FIREFOX) ? null : `${FIREFOX} (apt-get install firefox-esr)`;
  if (!existsSync(WEBKIT_DRIVER)) return `${WEBKIT_DRIVER} (apt-get install webkit2gtk-driver)`;
  if (!miniBrowser()) return "MiniBrowser (apt-get install webkit2gtk-driver)";
  if (!process.env.DISPLAY && spawnSync("which", ["Xvfb"]).status !== 0) return "Xvfb (apt-get install xvfb)";
  return null;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe()` until it returns something truthy, or throws after `timeout` ms. */
async function until(what, probe, timeout = 15000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    let value;
    try {
      value = await probe();
    } catch {
      value = null; // mid-navigation: try again
    }
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------
// A window (the page or a popup) of a driver that holds element handles per
// page object: playwright-core and puppeteer-core look alike here.

class PageWindow {
  constructor(page) {
    this.page = page;
  }
  evaluate(fn, arg) {
    return this.page.evaluate(fn, arg);
  }
  async has(css) {
    if (this.page.isClosed()) return false;
    return (await this.page.$(css)) !== null;
  }
  async closed() {
    return this.page.isClosed();
  }
  async fill(css, text) {
    const element = await this.page.$(css);
    await element.click({ clickCount: 3 }).catch(() => {});
    await this.page.$eval(css, (e) => (e.value = ""));
    await element.type(text);
  }
  async click(css) {
    await this.page.click(css);
  }
  async url() {
    return this.page.url();
  }
}

class Chromium {
  static async launch(target) {
    const profile = mkdtempSync(join(tmpdir(), "chatgate-e2e-chromium-"));
    mkdirSync(join(profile, "Default"), { recursive: true });
    const mode = target.setting === "block-third-party" ? 1 : 0;
    writeFileSync(join(profile, "Default", "Preferences"), JSON.stringify({ profile: { cookie_controls_mode: mode } }));
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      ignoreHTTPSErrors: true,
      args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"],
    });
    const page = context.pages()[0] || (await context.newPage());
    return new Chromium(context, page, profile);
  }
  constructor(context, page, profile) {
    this.context = context;
    this.main = new PageWindow(page);
    this.profile = profile;
  }
  goto(url) {
    return this.main.page.goto(url);
  }
  reload() {
    return this.main.page.reload();
  }
  async clickForPopup(css) {
    const [popup] = await Promise.all([this.context.waitForEvent("page"), this.main.page.click(css)]);
    return new PageWindow(popup);
  }
  async clearCookies() {
    await this.context.clearCookies();
  }
  async close() {
    await this.context.close();
    rmSync(this.profile, { recursive: true, force: true });
  }
}

class Firefox {
  static async launch(target) {
    const profile = mkdtempSync(join(tmpdir(), "chatgate-e2e-firefox-"));
    // 5: Total Cookie Protection (Firefox's default, which puppeteer's
    // profile would otherwise relax); 1: block all third-party cookies.
    const cookieBehavior = target.setting === "block-third-party" ? 1 : 5;
    const browser = await puppeteer.launch({
      browser: "firefox",
      executablePath: FIREFOX,
      headless: true,
      acceptInsecureCerts: true,
      userDataDir: profile,
      extraPrefsFirefox: {
        "network.cookie.cookieBehavior": cookieBehavior,
        "network.cookie.cookieBehavior.pbmode": cookieBehavior,
        "dom.disable_open_during_load": true,
        "browser.safebrowsing.malware.enabled": false,
        "browser.safebrowsing.phishing.enabled": false,
        "network.captive-portal-service.enabled": false,
        "network.connectivity-service.enabled": false,
      },
    });
    const [page] = await browser.pages();
    return new Firefox(browser, page || (await browser.newPage()), profile);
  }
  constructor(browser, page, profile) {
    this.browser = browser;
    this.main = new PageWindow(page);
    this.profile = profile;
  }
  goto(url) {
    return this.main.page.goto(url);
  }
  reload() {
    return this.main.page.reload();
  }
  async clickForPopup(css) {
    const opened = new Promise((resolve) => this.main.page.once("popup", resolve));
    await this.main.page.click(css);
    return new PageWindow(await opened);
  }
  async clearCookies() {
    // Every cookie of every site and partition.
    const all = await this.browser.cookies();
    if (all.length) await this.browser.deleteCookie(...all);
  }
  async close() {
    await this.browser.close();
    rmSync(this.profile, { recursive: true, force: true });
  }
}

// WebDriver classic has one current window per session: each window object
// switches to its own handle before it acts.
class DriverWindow {
  constructor(engine, handle) {
    this.engine = engine;
    this.handle = handle;
  }
  async focus() {
    if (this.engine.current !== this.handle) {
      await this.engine.session.switchTo(this.handle);
      this.engine.current = this.handle;
    }
  }
  async evaluate(fn, arg) {
    await this.focus();
    return this.engine.session.evaluate(fn, arg);
  }
  async closed() {
    return !(await this.engine.session.windows()).includes(this.handle);
  }
  async has(css) {
    if (await this.closed()) return false;
    await this.focus();
    return (await this.engine.session.find(css)) !== null;
  }
  async fill(css, text) {
    await this.focus();
    await this.engine.session.type(css, text);
  }
  async click(css) {
    await this.focus();
    await this.engine.session.click(css);
  }
  async url() {
    await this.focus();
    return this.engine.session.currentUrl();
  }
}

class WebKit {
  static async launch(target) {
    const port = await freePort("127.0.0.1");
    const env = { ...process.env };
    let xvfb = null;
    if (!env.DISPLAY) {
      // A display of its own for MiniBrowser (a real GTK window).
      const display = `:${90 + (port % 400)}`;
      xvfb = spawn("Xvfb", [display, "-screen", "0", "1280x1024x24", "-nolisten", "tcp"], { stdio: "ignore" });
      env.DISPLAY = display;
      await sleep(300);
    }
    const driver = spawn(WEBKIT_DRIVER, [`--port=${port}`, "--host=127.0.0.1"], { env, stdio: "ignore" });
    const session = new WebDriverSession(`http://127.0.0.1:${port}`);
    const args = ["--automation"];
    if (target.setting === "itp") args.push("--enable-itp");
    await until("WebKitWebDriver", () => fetch(`http://127.0.0.1:${port}/status`).then((r) => r.ok), 10000);
    await session.start({
      browserName: "MiniBrowser",
      acceptInsecureCerts: true,
      "webkitgtk:browserOptions": { binary: miniBrowser(), args },
    });
    await session.setTimeouts({ script: 60000, pageLoad: 30000 });
    const engine = new WebKit(session, driver, xvfb);
    engine.current = await session.currentWindow();
    engine.main = new DriverWindow(engine, engine.current);
    return engine;
  }
  constructor(session, driver, xvfb) {
    this.session = session;
    this.driver = driver;
    this.xvfb = xvfb;
    this.visited = new Set();
  }
  async goto(url) {
    await this.main.focus();
    this.visited.add(new URL(url).origin);
    await this.session.navigate(url);
  }
  async reload() {
    await this.main.focus();
    await this.session.refresh();
  }
  async clickForPopup(css) {
    const before = await this.session.windows();
    await this.main.click(css);
    const handle = await until("the popup", async () => (await this.session.windows()).find((h) => !before.includes(h)));
    return new DriverWindow(this, handle);
  }
  /**
   * WebDriver deletes the cookies of the current site only: visits each
   * `origins` (and every site the page was sent to) and deletes theirs,
   * then comes back.
   */
  async clearCookies(origins = []) {
    await this.main.focus();
    const back = await this.session.currentUrl();
    for (const origin of new Set([...origins, ...this.visited])) {
      await this.session.navigate(`${origin}/`);
      await this.session.deleteCookies();
    }
    await this.session.navigate(back);
  }
  async close() {
    try {
      await this.session.end();
    } finally {
      this.driver.kill();
      this.xvfb?.kill();
    }
  }
}

const DRIVERS = { chromium: Chromium, firefox: Firefox, webkit: WebKit };

/**
 * Launches `target` (one of TARGETS) with a fresh profile. The result has
 * `main` (the page: evaluate, has, fill, click, url), `goto`, `reload`,
 * `clickForPopup(css)` (a window like `main`), `clearCookies(origins)` and
 * `close()`.
 */
export async function launchTarget(target) {
  const browser = await DRIVERS[target.engine].launch(target);
  browser.target = target;
  return browser;
}

/** Waits until `window` shows one of `selectors` or closes: which one, or "closed". */
export async function waitForOneOf(window, selectors, timeout = 15000) {
  return until(`one of ${selectors.join(", ")}`, async () => {
    if (await window.closed()) return "closed";
    for (const css of selectors) if (await window.has(css)) return css;
    return null;
  }, timeout);
}

/** Waits until the text of `css` in `window` matches `pattern`; resolves with it. */
export async function waitForText(window, css, pattern, timeout = 15000) {
  let last = null;
  return until(
    `${css} to match ${pattern} (last: ${JSON.stringify(last)})`,
    async () => {
      last = await window.evaluate((css) => document.querySelector(css)?.textContent ?? null, css);
      return last !== null && pattern.test(last) ? last : null;
    },
    timeout,
  ).catch((e) => {
    throw new Error(`${e.message}; the text was ${JSON.stringify(last)}`);
  });
}

/** In the IdP's popup: the login form if shown, the consent form if shown, until it closes. */
export async function completeIdpInteraction(popup, { username, password }) {
  const seen = { login: false, consent: false };
  for (let step = 0; step < 6; step++) {
    const which = await waitForOneOf(popup, ["#login", "#consent"]).catch(async (e) => {
      throw new Error(`${e.message}; popup at ${await popup.url().catch(() => "?")}`);
    });
    if (which === "closed") return seen;
    if (which === "#login") {
      seen.login = true;
      await popup.fill("#username", username);
      await popup.fill("#password", password);
      await popup.click("#submit");
    } else {
      seen.consent = true;
      await popup.click("#allow");
    }
    // The next page (or the window closing) before looking again.
    await until("the next page", async () => (await popup.closed()) || !(await popup.has(which)), 15000);
  }
  throw new Error("the IdP popup did not finish");
}

/**
 * The third-party-cookie behaviour of this browser, measured: `sent` (a
 * cookie the probe's site set top-level reaches it in a cross-site iframe)
 * and `kept` (a partitioned cookie it sets in the iframe comes back).
 */
export async function probeThirdPartyCookies(browser, probe, hostUrl) {
  await browser.goto(probe.set);
  await browser.goto(hostUrl);
  const frame = (src, key) =>
    browser.main.evaluate(
      ({ src, key }) =>
        new Promise((resolve) => {
          const f = document.createElement("iframe");
          const done = (value) => {
            window.removeEventListener("message", onMessage);
            f.remove();
            resolve(value);
          };
          const onMessage = (e) => {
            if (e.data && key in e.data) done(e.data[key]);
          };
          window.addEventListener("message", onMessage);
          setTimeout(() => done(null), 5000);
          f.src = src;
          document.body.appendChild(f);
        }),
      { src, key },
    );
  const sent = await frame(probe.read, "probeCookieSent");
  await frame(probe.frameSet, "probeCookieSet");
  const kept = await frame(probe.frameRead, "probeCookieKept");
  return { sent, kept };
}
