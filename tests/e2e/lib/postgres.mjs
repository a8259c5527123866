// A PostgreSQL database of a script's own (the benchmarks' runs on
// PostgreSQL): created on the server of an admin URL, dropped after.
import { execFileSync } from "node:child_process";

/** Runs `fn(databaseUrl)` with a new database on `adminUrl`'s server. */
export async function withPostgres(adminUrl, fn) {
  const name = `chatgate_e2e_${process.pid}`;
  const psql = (sql) => execFileSync("psql", [adminUrl, "-qAtc", sql], { stdio: ["ignore", "ignore", "inherit"] });
  psql(`CREATE DATABASE ${name}`);
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  try {
    return await fn(url.toString());
  } finally {
    psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  }
}
