// With CHATGATE_BENCH_SPLIT=1, bench-renewal's browser runs on one CPU and
// the servers it talks to (the IdP, the host page's server, chatgate) on
// another, as a user's machine and the servers are apart in the field; by
// default everything shares every CPU. A diagnostic, not the default: on a
// machine of two CPUs the browser then has one, which slows a flow that does
// more in the browser (oidc-client-ts loads a page and a script in its frame)
// more than one that does less. Needs two CPUs and `taskset` (util-linux).
// PostgreSQL (a system service) runs anywhere.
import { execFileSync } from "node:child_process";
import { availableParallelism } from "node:os";

const BROWSER_CPU = "0";
const SERVER_CPU = "1";

function taskset(cpu, pid) {
  execFileSync("taskset", ["-a", "-p", "-c", cpu, String(pid)], { stdio: "ignore" });
}

/** Whether the CPUs are split (CHATGATE_BENCH_SPLIT=1); call before the servers start. */
export function splitCpus() {
  if (process.env.CHATGATE_BENCH_SPLIT !== "1" || availableParallelism() < 2) return false;
  try {
    // This process runs the IdP and the host page's server; chatgate, its
    // child, inherits the CPU.
    taskset(SERVER_CPU, process.pid);
    return true;
  } catch {
    return false;
  }
}

/** Moves the browser (this process's other children and theirs) to its CPU. */
export function pinBrowser(serverPids) {
  const tree = (pid) => {
    let children = [];
    try {
      children = execFileSync("pgrep", ["-P", String(pid)]).toString().trim().split("\n").filter(Boolean).map(Number);
    } catch {
      /* none */
    }
    return [pid, ...children.flatMap(tree)];
  };
  const mine = tree(process.pid).filter((pid) => pid !== process.pid && !serverPids.includes(pid));
  for (const pid of mine) taskset(BROWSER_CPU, pid);
  return mine.length;
}

export function describe(pinned) {
  return pinned
    ? `the browser on CPU ${BROWSER_CPU}; the IdP, the host page's server and chatgate on CPU ${SERVER_CPU} (CHATGATE_BENCH_SPLIT=1); PostgreSQL anywhere`
    : "the browser and the servers share every CPU";
}
