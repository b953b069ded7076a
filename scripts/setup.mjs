#!/usr/bin/env node
// One-time, idempotent set-up behind `npm start` and `npm test`, needing only Node 20 and npm:
//   1. pnpm (the pinned version) into .moat/tools, unless the right one is already on PATH;
//   2. workspace packages from the lockfile (skipped when the lockfile has not changed);
//   3. with --test: the Debian packages the tests start for real (PostgreSQL, psycopg2, psycopg 3, asyncpg, pgjdbc, nats-server), via apt-get;
//   4. a build of every package (turbo caches it).
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const forTests = process.argv.includes("--test");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const pnpmVersion = pkg.packageManager.replace(/^pnpm@/, "");

function say(message) {
  process.stderr.write(`[setup] ${message}\n`);
}

function fail(message) {
  process.stderr.write(`[setup] error: ${message}\n`);
  process.exit(1);
}

function run(cmd, args, options = {}) {
  const result = spawnSync(cmd, args, { cwd: root, stdio: "inherit", ...options });
  if (result.error) fail(`${cmd} could not run: ${result.error.message}`);
  if (result.status !== 0) fail(`${cmd} ${args.join(" ")} exited with ${result.status}`);
}

const [major, minor] = process.versions.node.split(".").map(Number);
if (major < 20 || (major === 20 && minor < 11)) fail(`Node.js >= 20.11 is required (this is ${process.versions.node})`);

// 1. pnpm
function pnpmOnPath() {
  try {
    return execFileSync("pnpm", ["--version"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return undefined;
  }
}
const toolsDir = join(root, ".moat", "tools");
const localPnpm = join(toolsDir, "node_modules", ".bin", "pnpm");
let pnpm = "pnpm";
if (pnpmOnPath() !== pnpmVersion) {
  if (!existsSync(localPnpm) || execFileSync(localPnpm, ["--version"], { encoding: "utf8" }).trim() !== pnpmVersion) {
    say(`installing pnpm ${pnpmVersion} into .moat/tools`);
    mkdirSync(toolsDir, { recursive: true });
    run("npm", [
      "install",
      "--prefix",
      toolsDir,
      "--no-save",
      "--no-audit",
      "--no-fund",
      "--loglevel=error",
      `pnpm@${pnpmVersion}`,
    ]);
  }
  pnpm = localPnpm;
}
process.env.PATH = `${dirname(localPnpm)}:${process.env.PATH}`;

// 2. packages
const lockHash = createHash("sha256")
  .update(readFileSync(join(root, "pnpm-lock.yaml")))
  .digest("hex");
const stamp = join(root, "node_modules", ".moat-install-stamp");
if (!existsSync(stamp) || readFileSync(stamp, "utf8") !== lockHash) {
  say("installing packages from the lockfile");
  run(pnpm, ["install", "--frozen-lockfile", "--reporter=append-only"], { env: { ...process.env, CI: "true" } });
  writeFileSync(stamp, lockHash);
}

// 3. services the tests run for real
function postgresInstalled() {
  const base = "/usr/lib/postgresql";
  return existsSync(base) && readdirSync(base).some((v) => existsSync(join(base, v, "bin", "initdb")));
}
if (forTests) {
  const wanted = [];
  if (!postgresInstalled() || !existsSync("/usr/bin/psql")) wanted.push("postgresql", "postgresql-client");
  // The Postgres enforcer's tests drive real clients: pgbench (in postgresql), psycopg2, psycopg 3,
  // asyncpg and pgjdbc.
  const python = (module) =>
    existsSync("/usr/bin/python3") &&
    spawnSync("/usr/bin/python3", ["-c", `import ${module}`], { stdio: "ignore" }).status === 0;
  if (!python("psycopg2")) wanted.push("python3-psycopg2");
  if (!python("psycopg")) wanted.push("python3-psycopg");
  if (!python("asyncpg")) wanted.push("python3-asyncpg");
  // And pgjdbc, run as a single-file Java program (which needs a JDK's compiler).
  if (spawnSync("javac", ["-version"], { stdio: "ignore" }).status !== 0) wanted.push("default-jdk-headless");
  if (!existsSync("/usr/share/java/postgresql.jar")) wanted.push("libpostgresql-jdbc-java");
  // A connection pooler as a target (it must be declared, in session mode).
  if (!existsSync("/usr/sbin/pgbouncer")) wanted.push("pgbouncer");
  // The audit sinks' tests publish to a real NATS server with JetStream.
  if (!["/usr/sbin/nats-server", "/usr/bin/nats-server"].some((p) => existsSync(p))) wanted.push("nats-server");
  if (wanted.length > 0) {
    if (process.getuid?.() !== 0) {
      fail(
        `the tests need these Debian packages: ${wanted.join(" ")}. Install them (sudo apt-get install -y ${wanted.join(" ")}) and run again.`,
      );
    }
    say(`installing Debian packages: ${wanted.join(" ")}`);
    run("apt-get", ["update", "-qq"]);
    run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", ...wanted], {
      env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
    });
  }
}

// 4. build
say("building");
run(pnpm, ["exec", "turbo", "run", "build", "--output-logs=errors-only"]);
