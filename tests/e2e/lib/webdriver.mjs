// A small W3C WebDriver (classic) client: just the commands the browser
// suite needs, for WebKitGTK's WebKitWebDriver, which speaks no BiDi.
// https://www.w3.org/TR/webdriver2/

const ELEMENT = "element-6066-11e4-a52e-4f735466cecf";

export class WebDriverError extends Error {
  constructor(command, value) {
    super(`${command}: ${value.error}: ${value.message}`);
    this.error = value.error;
  }
}

export class WebDriverSession {
  constructor(base) {
    this.base = base;
    this.id = null;
  }

  async command(method, path, body) {
    const url = this.id === null ? `${this.base}${path}` : `${this.base}/session/${this.id}${path}`;
    const response = await fetch(url, {
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = await response.json();
    if (answer.value && answer.value.error) throw new WebDriverError(`${method} ${path}`, answer.value);
    return answer.value;
  }

  async start(capabilities) {
    const value = await this.command("POST", "/session", { capabilities: { alwaysMatch: capabilities } });
    this.id = value.sessionId;
    return value.capabilities;
  }

  navigate(url) {
    return this.command("POST", "/url", { url });
  }

  currentUrl() {
    return this.command("GET", "/url");
  }

  refresh() {
    return this.command("POST", "/refresh", {});
  }

  /** Runs `fn(arg)` (which may return a promise) in the page; resolves with its value. */
  async evaluate(fn, arg) {
    const script = `const done = arguments[arguments.length - 1];
      Promise.resolve().then(() => (${fn.toString()})(arguments[0]))
        .then((value) => done({ value }), (e) => done({ thrown: String(e && e.stack || e) }));`;
    const result = await this.command("POST", "/execute/async", { script, args: [arg === undefined ? null : arg] });
    if (result && "thrown" in result) throw new Error(`in the page: ${result.thrown}`);
    return result ? result.value : undefined;
  }

  async find(css) {
    const found = await this.command("POST", "/elements", { using: "css selector", value: css });
    return found.length ? found[0][ELEMENT] : null;
  }

  async click(css) {
    const element = await this.find(css);
    if (!element) throw new Error(`no element ${css}`);
    return this.command("POST", `/element/${element}/click`, {});
  }

  async type(css, text) {
    const element = await this.find(css);
    if (!element) throw new Error(`no element ${css}`);
    await this.command("POST", `/element/${element}/clear`, {});
    return this.command("POST", `/element/${element}/value`, { text });
  }

  windows() {
    return this.command("GET", "/window/handles");
  }

  currentWindow() {
    return this.command("GET", "/window");
  }

  switchTo(handle) {
    return this.command("POST", "/window", { handle });
  }

  /** Deletes every cookie of the current page's site. */
  deleteCookies() {
    return this.command("DELETE", "/cookie");
  }

  setTimeouts(timeouts) {
    return this.command("POST", "/timeouts", timeouts);
  }

  async end() {
    if (this.id === null) return;
    try {
      await this.command("DELETE", "");
    } finally {
      this.id = null;
    }
  }
}
