// Runs `chatgate demo` (the README's first command) on free ports, as a
// newcomer would, for the browser tests that drive it.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chatgateBinary } from "./chatgate.mjs";
import { freePort } from "./ports.mjs";

/** Starts the demo; resolves once it printed what to open. */
export async function startDemo() {
  const dir = mkdtempSync(join(tmpdir(), "chatgate-demo-test-"));
  const [host, chatgate, idp] = await Promise.all([freePort("127.0.0.1"), freePort("127.0.0.1"), freePort("127.0.0.1")]);
  const output = [];
  const child = spawn(
    chatgateBinary(),
    ["demo", "--data-dir", join(dir, "data"), "--host-port", host, "--chatgate-port", chatgate, "--idp-port", idp].map(String),
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  child.stdout.on("data", (d) => output.push(d.toString()));
  child.stderr.on("data", (d) => output.push(d.toString()));
  const deadline = Date.now() + 30000;
  while (!output.join("").includes("Press Ctrl-C to stop")) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the demo did not start:\n${output.join("")}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    child,
    dir,
    output,
    shop: `http://localhost:${host}`,
    chatgate: `http://127.0.0.1:${chatgate}`,
    idp: `http://127.0.0.1:${idp}`,
    /** Ctrl-C; resolves with the exit code. */
    async stop() {
      const exited = new Promise((r) => child.once("exit", (code) => r(code)));
      child.kill("SIGINT");
      const code = await exited;
      rmSync(dir, { recursive: true, force: true });
      return code;
    },
  };
}
