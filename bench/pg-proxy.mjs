#!/usr/bin/env node
// Postgres through a proxy: pgbench TPS and average latency, side by side in one run, for the same
// PostgreSQL 15 server reached six ways:
//
//   direct      pgbench -> PostgreSQL
//   pgbouncer   PgBouncer, session pooling, no inspection
//   pgpool      pgpool-II (parses every query; streaming_replication mode, one ALWAYS_PRIMARY backend,
//               load balancing on)
//   pipe        a bare Node.js socket pipe in its own process: the floor for any Node proxy
//   agent       the Moat agent: token auth, every statement classified, decided and audited
//   agent-mask  the Moat agent on a resource whose policy masks a column (filler, which pgbench never
//               returns) and runs the email detector, so the result-masking path is active
//
// Everything is started here on free loopback ports with throwaway directories (a temp cluster with
// fsync off, `pgbench -i -s 10`, the built control plane and agent from dist/) and stopped at the
// end, on error and on Ctrl-C. For each mode (select-only -S, TPC-B-like) and client count, every
// path runs --runs times, interleaved (the path order rotates each run so drift hits all paths
// alike); medians are reported. The main table uses the simple query protocol (-M simple, what
// libpq clients send by default); select-only at 8 clients is also run with -M extended, and the
// agent once more with sslmode=require. Also: the agent's RSS idle, its peak and at the end, and an
// extra scenario: a 1 M-row SELECT through psql, direct vs through the agent with masking on.
//
// Run: pnpm build && node bench/pg-proxy.mjs [--seconds 10] [--runs 3] [--clients 1,8,32]
//      [--modes select,tpcb] [--only direct,pgbouncer,pgpool,pipe,agent,agent-mask]
// Progress goes to stderr, results to stdout. Bounded: the script stops itself after --max-minutes.
import { execFile, spawn } from "node:child_process";
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  closeSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createHash } from "node:crypto";
import { createServer } from "node:net";
import { cpus, loadavg, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const CONTROL_PLANE_MAIN = join(ROOT, "apps/control-plane/dist/main.js");
const DEFAULT_AGENT_MAIN = join(ROOT, "apps/agent/dist/moat-agent.mjs");
/** The agent's malloc settings as deployed (deploy/systemd/moat-agent.service, scripts/start.mjs). */
const AGENT_GLIBC_TUNABLES = "glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=65536";
const ALL_PATHS = ["direct", "pgbouncer", "pgpool", "pipe", "agent", "agent-mask"];
const MODES = { select: "select-only (-S)", tpcb: "TPC-B-like" };

const USAGE = `usage: node bench/pg-proxy.mjs [options]
  --seconds S          duration of each pgbench run (default 10)
  --runs K             runs per path and setting, interleaved; medians reported (default 3)
  --clients LIST       pgbench client counts, comma-separated (default 1,8,32)
  --modes LIST         select (-S) and/or tpcb (default select,tpcb)
  --only LIST          paths to measure (default ${ALL_PATHS.join(",")})
  --scale N            pgbench scale factor (default 10: 1 M accounts)
  --warmup S           warm-up run per path and mode before measuring, in seconds (default 3; 0: none)
  --skip-extended      do not run -M extended (select-only, 8 clients)
  --skip-tls           do not run the agent with sslmode=require
  --skip-extra         do not run the 1 M-row SELECT scenario
  --agent-log-level L  the agent's log level (default info)
  --agent-data-dir D   parent of the agent's data dir (its audit spool: written each event-loop turn, fsynced within 5 ms); default
                       the bench's temp dir. E.g. /dev/shm to see the agent without the fsync cost
  --agent-main FILE    the agent bundle to run (default apps/agent/dist/moat-agent.mjs); e.g. a copy of an
                       earlier build, to compare two builds by alternating runs of this script
  --agent-glibc-tunables T
                       GLIBC_TUNABLES of the agent's process (default: the deployed setting,
                       ${AGENT_GLIBC_TUNABLES}; "" for glibc's defaults)
  --agent-node-args A  extra node flags for the agent, space-separated
                       (e.g. --agent-node-args="--cpu-prof --cpu-prof-dir=/tmp/prof" to profile it)
  --pause-control-plane
                       stop the control plane (SIGSTOP) during each agent run and let the agent ship its backlog
                       between runs: the agent's own cost, as when the control plane runs on another machine
                       (the agent keeps enforcing and spooling; shipping waits for the next pause to end)
  --sessions N         idle psql sessions opened through the agent at the end to read its RSS
                       (default 200; 0: skip)
  --max-minutes T      hard stop for the whole script (default 90)`;

let args;
try {
  args = parseArgs({
    options: {
      seconds: { type: "string", default: "10" },
      runs: { type: "string", default: "3" },
      clients: { type: "string", default: "1,8,32" },
      modes: { type: "string", default: "select,tpcb" },
      only: { type: "string", default: ALL_PATHS.join(",") },
      scale: { type: "string", default: "10" },
      warmup: { type: "string", default: "3" },
      "skip-extended": { type: "boolean", default: false },
      "skip-tls": { type: "boolean", default: false },
      "skip-extra": { type: "boolean", default: false },
      "agent-log-level": { type: "string", default: "info" },
      "agent-node-args": { type: "string", default: "" },
      "agent-glibc-tunables": { type: "string", default: AGENT_GLIBC_TUNABLES },
      "agent-main": { type: "string", default: "" },
      "agent-data-dir": { type: "string", default: "" },
      "max-minutes": { type: "string", default: "90" },
      "pause-control-plane": { type: "boolean", default: false },
      sessions: { type: "string", default: "200" },
      help: { type: "boolean", short: "h", default: false },
    },
  }).values;
} catch (error) {
  process.stderr.write(`${error.message}\n${USAGE}\n`);
  process.exit(2);
}
if (args.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const AGENT_MAIN = args["agent-main"] || DEFAULT_AGENT_MAIN;
const usageError = (message) => {
  process.stderr.write(`${message}\n${USAGE}\n`);
  process.exit(2);
};
const positiveInt = (name, text) => {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) usageError(`--${name} must be a positive integer, got "${text}"`);
  return n;
};
const list = (text) =>
  text
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
const SECONDS = positiveInt("seconds", args.seconds);
const RUNS = positiveInt("runs", args.runs);
const CLIENTS = [...new Set(list(args.clients).map((s) => positiveInt("clients", s)))];
const MODE_LIST = list(args.modes);
for (const m of MODE_LIST) if (!(m in MODES)) usageError(`--modes: unknown mode "${m}" (known: select, tpcb)`);
const PATHS = list(args.only);
for (const p of PATHS)
  if (!ALL_PATHS.includes(p)) usageError(`--only: unknown path "${p}" (known: ${ALL_PATHS.join(", ")})`);
const SCALE = positiveInt("scale", args.scale);
const WARMUP = args.warmup === "0" ? 0 : positiveInt("warmup", args.warmup);
const MAX_MINUTES = positiveInt("max-minutes", args["max-minutes"]);
const SESSIONS = args.sessions === "0" ? 0 : positiveInt("sessions", args.sessions);
const PAUSE_CP = args["pause-control-plane"];
/** The control plane's pid while it is stopped by --pause-control-plane (continued on any exit). */
let pausedCp;
function signal(pid, sig) {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}
if (SESSIONS > 250) usageError("--sessions: at most 250 (the server allows 300 connections)");
const MAX_CLIENTS = Math.max(...CLIENTS, 8);
if (MAX_CLIENTS > 150) usageError("--clients: at most 150 (the server allows 300 connections, 250 for --sessions)");

const started = performance.now();
const progress = (message) =>
  process.stderr.write(`[${((performance.now() - started) / 1000).toFixed(1).padStart(6)} s] ${message}\n`);
const out = (line = "") => process.stdout.write(`${line}\n`);

// ---------------------------------------------------------------------------------------------
// Small helpers

function median(values) {
  const xs = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (xs.length === 0) return NaN;
  const mid = Math.floor(xs.length / 2);
  return xs.length % 2 ? xs[mid] : (xs[mid - 1] + xs[mid]) / 2;
}
const fmt = (v, digits = 0) => (Number.isFinite(v) ? v.toFixed(digits) : "n/a");
const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${(a / b).toFixed(2)}x` : "n/a");
const mib = (kib) => (Number.isFinite(kib) ? `${(kib / 1024).toFixed(0)} MiB` : "n/a");

function table(columns, rows) {
  const widths = columns.map((c, i) => Math.max(c.length, ...rows.map((row) => String(row[i]).length)));
  const line = (cells) =>
    cells
      .map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i])))
      .join("  ")
      .trimEnd();
  out(line(columns));
  out(line(widths.map((w) => "-".repeat(w))));
  for (const row of rows) out(line(row));
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolve(address.port));
    });
  });
}

/** Runs a command to completion; rejects with its output on a non-zero exit or after `timeoutMs`. */
/** Short-lived commands in flight (pgbench, psql, initdb), killed when the bench stops. */
const commands = new Set();
let stopping = false;

function run(cmd, argv, { timeoutMs = 60_000, env, asPostgres = false, cwd } = {}) {
  if (stopping) return Promise.reject(new Error("the bench is stopping"));
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      argv,
      {
        timeout: timeoutMs,
        killSignal: "SIGKILL",
        maxBuffer: 64 * 1024 * 1024,
        env: env ?? process.env,
        cwd,
        ...(asPostgres && PG_USER ? { uid: PG_USER.uid, gid: PG_USER.gid } : {}),
      },
      (error, stdout, stderr) => {
        commands.delete(child);
        if (error) {
          const why = stopping
            ? "killed: the bench is stopping"
            : error.killed
              ? `timed out after ${timeoutMs} ms`
              : `exit ${error.code ?? error.signal}`;
          reject(
            new Error(`${cmd} ${argv.join(" ")}: ${why}\n${String(stderr).trim()}\n${String(stdout).trim()}`.trim()),
          );
        } else resolve({ stdout: String(stdout), stderr: String(stderr) });
      },
    );
    commands.add(child);
  });
}

/** VmRSS and VmHWM of a process, in KiB. */
function memoryOf(pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const field = (name) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN);
    // RssFile: pages of files mapped (the node binary's code, V8's snapshot, ICU data), shared with
    // every other node process; RssAnon: the heap, WebAssembly memory, buffers.
    return { rss: field("VmRSS"), hwm: field("VmHWM"), anon: field("RssAnon"), file: field("RssFile") };
  } catch {
    return { rss: NaN, hwm: NaN };
  }
}

/** User+system CPU time of a process, in ms (clock ticks are 1/100 s on Linux). */
function cpuMsOf(pid) {
  if (!pid) return NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return NaN;
  }
}

// ---------------------------------------------------------------------------------------------
// Tools, OS user, work directory

function which(name, extra = []) {
  for (const dir of [...extra, ...(process.env.PATH ?? "").split(":"), "/usr/sbin", "/sbin"]) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return undefined;
}
function postgresBinDir() {
  const base = "/usr/lib/postgresql";
  if (!existsSync(base)) return undefined;
  const versions = readdirSync(base).sort((a, b) => Number(b) - Number(a));
  for (const v of versions) if (existsSync(join(base, v, "bin", "postgres"))) return join(base, v, "bin");
  return undefined;
}

const PG_BIN = postgresBinDir();
const TOOLS = {
  pgbench: which("pgbench", PG_BIN ? [PG_BIN] : []),
  psql: which("psql", PG_BIN ? [PG_BIN] : []),
  initdb: PG_BIN && join(PG_BIN, "initdb"),
  postgres: PG_BIN && join(PG_BIN, "postgres"),
  pgbouncer: which("pgbouncer"),
  pgpool: which("pgpool"),
};
{
  const missing = ["pgbench", "psql", "initdb", "postgres"].filter((t) => !TOOLS[t] || !existsSync(TOOLS[t]));
  if (missing.length) {
    process.stderr.write(
      `pg-proxy: missing ${missing.join(", ")}: install PostgreSQL (apt-get install postgresql postgresql-contrib)\n`,
    );
    process.exit(2);
  }
}

/** As root, PostgreSQL, PgBouncer and pgpool-II run as the `postgres` OS user (they refuse root). */
let PG_USER;
if (process.getuid?.() === 0) {
  try {
    const passwd = readFileSync("/etc/passwd", "utf8");
    const entry = passwd.split("\n").find((l) => l.startsWith("postgres:"));
    if (!entry) throw new Error("no postgres user");
    const [, , uid, gid] = entry.split(":");
    PG_USER = { uid: Number(uid), gid: Number(gid) };
  } catch {
    process.stderr.write("pg-proxy: running as root needs a `postgres` OS user (the postgresql package creates it)\n");
    process.exit(2);
  }
}
const own = (path) => {
  if (PG_USER) chownSync(path, PG_USER.uid, PG_USER.gid);
};
const WORK = mkdtempSync(join(tmpdir(), "moat-bench-pg-"));
chmodSync(WORK, 0o755);
own(WORK);
function writeOwned(path, content, mode = 0o644) {
  writeFileSync(path, content, { mode });
  own(path);
}

// ---------------------------------------------------------------------------------------------
// Long-running processes: each in its own process group, all killed on exit, error and Ctrl-C.

const groups = new Set(); // pgids ever started and not yet swept

/**
 * Starts a long-running process. `stopSignal` ends it gracefully; its whole process group is
 * SIGKILLed afterwards (and at exit) so no child (pgpool's, postgres backends) outlives the bench.
 */
function startProcess(name, cmd, argv, { env, asPostgres = false, stopSignal = "SIGTERM", cwd } = {}) {
  // MOAT_BENCH_NODE_ARGS: extra flags for the Node processes it starts (e.g. --cpu-prof to profile them).
  if (cmd === process.execPath && process.env.MOAT_BENCH_NODE_ARGS)
    argv = [...process.env.MOAT_BENCH_NODE_ARGS.split(/\s+/).filter(Boolean), ...argv];
  const child = spawn(cmd, argv, {
    detached: true,
    cwd: cwd ?? WORK,
    env: env ?? process.env,
    stdio: ["ignore", "pipe", "pipe"],
    ...(asPostgres && PG_USER ? { uid: PG_USER.uid, gid: PG_USER.gid } : {}),
  });
  const pid = child.pid;
  if (pid) groups.add(pid);
  let tail = "";
  let partial = "";
  const lineHandlers = [];
  const onOutput = (chunk) => {
    const text = chunk.toString();
    tail = (tail + text).slice(-16_000);
    if (lineHandlers.length === 0) return;
    const lines = (partial + text).split("\n");
    partial = lines.pop() ?? "";
    for (const l of lines) for (const h of lineHandlers) h(l);
  };
  child.stdout.on("data", onOutput);
  child.stderr.on("data", onOutput);
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  child.on("error", (error) => {
    tail += `\n[spawn error: ${error.message}]`;
  });
  return {
    name,
    pid,
    child,
    tail: () => tail,
    onLine: (h) => lineHandlers.push(h),
    alive: () => child.exitCode === null && child.signalCode === null,
    exited,
    async stop(graceMs = 10_000) {
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(pid, stopSignal);
        } catch {
          // gone already
        }
        await Promise.race([exited, sleep(graceMs)]);
      }
      killGroup(pid);
      await Promise.race([exited, sleep(2_000)]);
    },
  };
}

function killGroup(pgid) {
  try {
    process.kill(-pgid, "SIGKILL");
  } catch {
    // nothing left in it
  }
  groups.delete(pgid);
}

const stoppers = []; // async cleanups, run in reverse order
let cleaningUp;
async function cleanup() {
  stopping = true;
  cleaningUp ??= (async () => {
    for (const child of commands) child.kill("SIGKILL");
    if (pausedCp) signal(pausedCp, "SIGCONT");
    for (const stop of stoppers.reverse()) {
      try {
        await stop();
      } catch (error) {
        progress(`cleanup: ${error.message}`);
      }
    }
    for (const pgid of [...groups]) killGroup(pgid);
    rmSync(WORK, { recursive: true, force: true });
  })();
  return cleaningUp;
}
process.on("exit", () => {
  if (pausedCp) signal(pausedCp, "SIGCONT");
  for (const pgid of [...groups]) killGroup(pgid);
  try {
    rmSync(WORK, { recursive: true, force: true });
  } catch {
    // best effort
  }
});
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(signal, () => {
    process.stderr.write(`\npg-proxy: ${signal}: stopping everything\n`);
    const force = setTimeout(() => process.exit(130), 15_000);
    void cleanup().finally(() => {
      clearTimeout(force);
      process.exit(130);
    });
  });
}
const hardStop = setTimeout(() => {
  process.stderr.write(`pg-proxy: still running after ${MAX_MINUTES} min; stopping\n`);
  const force = setTimeout(() => process.exit(1), 15_000);
  void cleanup().finally(() => {
    clearTimeout(force);
    process.exit(1);
  });
}, MAX_MINUTES * 60_000);
hardStop.unref();

/** Polls `check` until it returns truthy (errors count as not yet) or `timeoutMs` passes. */
async function waitUntil(what, check, timeoutMs, intervalMs = 100) {
  const deadline = performance.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    if (performance.now() > deadline)
      throw new Error(`${what}: not ready within ${timeoutMs} ms${last ? `: ${last.message}` : ""}`);
    await sleep(intervalMs);
  }
}

/** libpq environment for one connection target (nothing inherited from the caller's PG* vars). */
function pgEnv({ port, user = "postgres", password, sslmode = "disable", database = "bench" }) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("PG")) env[k] = v;
  return {
    ...env,
    PGHOST: "127.0.0.1",
    PGPORT: String(port),
    PGUSER: user,
    PGDATABASE: database,
    PGSSLMODE: sslmode,
    PGCONNECT_TIMEOUT: "10",
    ...(password ? { PGPASSWORD: password } : {}),
  };
}
/** psql -c for each statement of `sql` (a string or a list: each -c is its own transaction). */
const psql = (target, sql, timeoutMs = 30_000) =>
  run(TOOLS.psql, ["-X", "-At", "-v", "ON_ERROR_STOP=1", ...[sql].flat().flatMap((q) => ["-c", q])], {
    env: pgEnv(target),
    timeoutMs,
  });

// ---------------------------------------------------------------------------------------------
// PostgreSQL

async function startPostgres() {
  const dir = join(WORK, "pg");
  const data = join(dir, "data");
  makeDir(dir);
  progress("initdb");
  await run(TOOLS.initdb, ["-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"], {
    asPostgres: true,
    timeoutMs: 120_000,
  });
  const port = await freePort();
  const proc = startProcess(
    "postgres",
    TOOLS.postgres,
    [
      "-D",
      data,
      "-p",
      String(port),
      "-k",
      dir,
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      "max_connections=300",
      "-c",
      "shared_buffers=256MB",
      "-c",
      "fsync=off",
      "-c",
      "synchronous_commit=off",
      "-c",
      "full_page_writes=off",
      "-c",
      "autovacuum=off",
    ],
    { asPostgres: true, stopSignal: "SIGINT" },
  );
  stoppers.push(() => proc.stop(15_000));
  const target = { port, database: "postgres" };
  await waitUntil(
    "PostgreSQL",
    async () => {
      if (!proc.alive()) throw new Error(`exited:\n${proc.tail()}`);
      return (await psql(target, "select 1", 5_000)).stdout.trim() === "1";
    },
    30_000,
  );
  const version = (await psql(target, "show server_version")).stdout.trim();
  progress(`PostgreSQL ${version} on 127.0.0.1:${port}; creating and filling the bench database (scale ${SCALE})`);
  await psql(target, "CREATE DATABASE bench");
  await run(TOOLS.pgbench, ["-i", "-q", "-s", String(SCALE)], { env: pgEnv({ port }), timeoutMs: 600_000 });
  await psql({ port }, "VACUUM ANALYZE");
  return { port, version, proc };
}

// ---------------------------------------------------------------------------------------------
// Baselines: PgBouncer, pgpool-II, a bare Node pipe

async function startPgbouncer(pgPort) {
  if (!TOOLS.pgbouncer) throw new Error("pgbouncer is not installed (apt-get install pgbouncer)");
  const dir = join(WORK, "pgbouncer");
  makeDir(dir);
  const port = await freePort();
  writeOwned(join(dir, "userlist.txt"), `"postgres" ""\n`, 0o600);
  writeOwned(
    join(dir, "pgbouncer.ini"),
    [
      "[databases]",
      `bench = host=127.0.0.1 port=${pgPort} dbname=bench user=postgres`,
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      "unix_socket_dir =",
      "auth_type = trust",
      `auth_file = ${join(dir, "userlist.txt")}`,
      "pool_mode = session",
      `max_client_conn = ${MAX_CLIENTS + 20}`,
      `default_pool_size = ${MAX_CLIENTS + 4}`,
      `logfile = ${join(dir, "pgbouncer.log")}`,
      `pidfile = ${join(dir, "pgbouncer.pid")}`,
      "log_connections = 0",
      "log_disconnections = 0",
      "",
    ].join("\n"),
  );
  const proc = startProcess("pgbouncer", TOOLS.pgbouncer, [join(dir, "pgbouncer.ini")], {
    asPostgres: true,
    stopSignal: "SIGTERM",
  });
  stoppers.push(() => proc.stop());
  await waitForPath("pgbouncer", proc, { port, user: "postgres" });
  return { port, proc, pid: proc.pid };
}

async function startPgpool(pgPort, dataDir) {
  if (!TOOLS.pgpool) throw new Error("pgpool is not installed (apt-get install pgpool2)");
  const dir = join(WORK, "pgpool");
  makeDir(dir);
  const port = await freePort();
  const pcpPort = await freePort();
  const conf = join(dir, "pgpool.conf");
  const pcp = join(dir, "pcp.conf");
  writeOwned(pcp, `bench:${createHash("md5").update("bench").digest("hex")}\n`, 0o600);
  writeOwned(
    conf,
    [
      "backend_clustering_mode = 'streaming_replication'",
      "listen_addresses = '127.0.0.1'",
      `port = ${port}`,
      `unix_socket_directories = '${dir}'`,
      "pcp_listen_addresses = '127.0.0.1'",
      `pcp_port = ${pcpPort}`,
      `pcp_socket_dir = '${dir}'`,
      "backend_hostname0 = '127.0.0.1'",
      `backend_port0 = ${pgPort}`,
      "backend_weight0 = 1",
      `backend_data_directory0 = '${dataDir}'`,
      "backend_flag0 = 'ALWAYS_PRIMARY'",
      "backend_application_name0 = 'server0'",
      "enable_pool_hba = off",
      "pool_passwd = ''",
      "allow_clear_text_frontend_auth = off",
      `num_init_children = ${MAX_CLIENTS + 8}`,
      "max_pool = 1",
      "reserved_connections = 0",
      "child_life_time = 0",
      "child_max_connections = 0",
      "connection_life_time = 0",
      "client_idle_limit = 0",
      "connection_cache = on",
      "load_balance_mode = on",
      "sr_check_period = 0",
      "health_check_period = 0",
      "failover_on_backend_error = off",
      "use_watchdog = off",
      `wd_ipc_socket_dir = '${dir}'`,
      "memory_cache_enabled = off",
      `pid_file_name = '${join(dir, "pgpool.pid")}'`,
      `logdir = '${dir}'`,
      "log_destination = 'stderr'",
      "log_min_messages = warning",
      "log_connections = off",
      "log_statement = off",
      "",
    ].join("\n"),
  );
  const proc = startProcess("pgpool", TOOLS.pgpool, ["-n", "-f", conf, "-F", pcp], {
    asPostgres: true,
    stopSignal: "SIGINT",
  });
  stoppers.push(() => proc.stop());
  await waitForPath("pgpool", proc, { port, user: "postgres" });
  return { port, proc, pid: undefined };
}

const PIPE_SOURCE = `
const net = require("node:net");
const [pgPort, listenPort] = process.argv.slice(1).map(Number);
net.createServer({ noDelay: true }, (c) => {
  const s = net.connect({ host: "127.0.0.1", port: pgPort, noDelay: true });
  c.on("error", () => s.destroy());
  s.on("error", () => c.destroy());
  c.pipe(s);
  s.pipe(c);
}).listen(listenPort, "127.0.0.1", () => process.stdout.write("listening\\n"));
`;

async function startPipe(pgPort) {
  const port = await freePort();
  const proc = startProcess("pipe", process.execPath, ["-e", PIPE_SOURCE, String(pgPort), String(port)]);
  stoppers.push(() => proc.stop());
  await waitForPath("pipe", proc, { port, user: "postgres" });
  return { port, proc, pid: proc.pid };
}

function makeDir(dir) {
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, 0o755);
  own(dir);
}

async function waitForPath(name, proc, target) {
  await waitUntil(
    name,
    async () => {
      if (!proc.alive()) throw new Error(`exited:\n${proc.tail().slice(-3000)}`);
      return (await psql(target, "select 1", 5_000)).stdout.trim() === "1";
    },
    30_000,
    200,
  );
}

// ---------------------------------------------------------------------------------------------
// The Moat control plane and agent

async function startMoat(pgPort) {
  for (const file of [CONTROL_PLANE_MAIN, AGENT_MAIN])
    if (!existsSync(file)) throw new Error(`${file} is missing: build first (pnpm exec turbo run build)`);
  const dir = join(WORK, "moat");
  makeDir(dir);

  // Control plane.
  const cpDir = join(dir, "cp");
  makeDir(cpDir);
  const keyFile = join(dir, "admin.key");
  const httpPort = await freePort();
  const grpcPort = await freePort();
  const cp = startProcess("control plane", process.execPath, [CONTROL_PLANE_MAIN], {
    cwd: ROOT,
    env: {
      ...process.env,
      MOAT_DATA_DIR: cpDir,
      MOAT_HTTP_HOST: "127.0.0.1",
      MOAT_HTTP_PORT: String(httpPort),
      MOAT_GRPC_HOST: "127.0.0.1",
      MOAT_GRPC_PORT: String(grpcPort),
      MOAT_BOOTSTRAP_ADMIN_KEY_FILE: keyFile,
      MOAT_LOG_LEVEL: "warn",
    },
  });
  stoppers.push(() => cp.stop());
  const cpProblems = collectProblems(cp);
  const url = `http://127.0.0.1:${httpPort}`;
  await waitUntil(
    "control plane",
    async () => {
      if (!cp.alive()) throw new Error(`exited:\n${cp.tail().slice(-3000)}`);
      return (await fetch(`${url}/readyz`, { signal: globalThis.AbortSignal.timeout(2_000) })).ok;
    },
    30_000,
  );
  const adminKey = readFileSync(keyFile, "utf8").trim();
  async function api(method, path, body, key = adminKey) {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${key}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: globalThis.AbortSignal.timeout(30_000),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${text.slice(0, 800)}`);
    return text ? JSON.parse(text) : undefined;
  }

  // Identity: a service account with an API key; its access tokens for agents are the password.
  const account = await api("POST", "/api/v1/service-accounts", { name: "bench", role: "member" });
  const { apiKey } = await api("POST", `/api/v1/users/${account.id}/api-keys`, { name: "bench" });
  const user = account.email; // a service account's name
  let token;
  let tokenAt = 0;
  async function freshToken() {
    // Tokens live 15 minutes and are checked at connect: mint a new one well before.
    if (!token || performance.now() - tokenAt > 5 * 60_000) {
      token = (await api("POST", "/api/v1/tokens", undefined, apiKey)).accessToken;
      tokenAt = performance.now();
    }
    return token;
  }

  // Policies: everything allowed on both resources; masking on bench-db-masked.
  const subjects = { serviceAccounts: [user] };
  await api("POST", "/api/v1/policies/apply", {
    documents: [
      {
        apiVersion: "moat.dev/v1",
        kind: "Policy",
        metadata: { name: "bench-allow", description: "pgbench may do anything on the bench resources" },
        spec: {
          subjects,
          resources: { names: ["bench-db", "bench-db-masked"] },
          rules: [{ name: "all", effect: "allow", actions: ["connect", "db:*"] }],
        },
      },
      {
        apiVersion: "moat.dev/v1",
        kind: "Policy",
        metadata: { name: "bench-mask", description: "masking on bench-db-masked" },
        spec: {
          subjects,
          resources: { names: ["bench-db-masked"] },
          rules: [{ name: "connect", effect: "allow", actions: ["connect"] }],
          masking: [
            { columns: ["filler"], style: "full" },
            { detectors: ["email"], style: "partial" },
          ],
        },
      },
    ],
  });

  // Agent.
  const { enrolmentToken } = await api("POST", "/api/v1/agents", { name: "bench-agent" });
  // The agent's data dir holds its audit spool, fsynced before each statement's answer is forwarded
  // (group commit): where it lives (disk or tmpfs) shows in the latency. Default: the bench's temp dir.
  let agentDir = join(dir, "agent");
  if (args["agent-data-dir"]) {
    agentDir = mkdtempSync(join(args["agent-data-dir"], "moat-bench-agent-"));
    stoppers.unshift(() => rmSync(agentDir, { recursive: true, force: true }));
  }
  makeDir(agentDir);
  const adminPort = await freePort();
  const port = await freePort();
  const maskedPort = await freePort();
  const target = `{ host: 127.0.0.1, port: ${pgPort}, user: postgres, sslmode: disable }`;
  const configFile = join(dir, "agent.yaml");
  writeFileSync(
    configFile,
    [
      `dataDir: ${agentDir}`,
      `admin: { port: ${adminPort} }`,
      "resources:",
      "  - name: bench-db",
      "    type: postgres",
      `    listen: 127.0.0.1:${port}`,
      "    postgres:",
      `      target: ${target}`,
      "  - name: bench-db-masked",
      "    type: postgres",
      `    listen: 127.0.0.1:${maskedPort}`,
      "    postgres:",
      `      target: ${target}`,
      "",
    ].join("\n"),
  );
  const agent = startProcess(
    "agent",
    process.execPath,
    [...args["agent-node-args"].split(" ").filter(Boolean), AGENT_MAIN, "--config", configFile],
    {
      cwd: ROOT,
      env: {
        ...process.env,
        MOAT_AGENT_ENROLMENT_TOKEN: enrolmentToken,
        GLIBC_TUNABLES: args["agent-glibc-tunables"],
        MOAT_AGENT_LOG_LEVEL: args["agent-log-level"],
      },
    },
  );
  stoppers.push(() => agent.stop());
  const agentProblems = collectProblems(agent);
  const health = await waitUntil(
    "agent bundle",
    async () => {
      if (!agent.alive()) throw new Error(`exited:\n${agent.tail().slice(-3000)}`);
      const h = await (
        await fetch(`http://127.0.0.1:${adminPort}/healthz`, { signal: globalThis.AbortSignal.timeout(2_000) })
      ).json();
      // The agent is created after the policies are applied: its first bundle holds them. (Bundle
      // versions are per agent, not policy revisions.)
      return h.bundleVersion !== "0" ? h : undefined;
    },
    60_000,
    200,
  );
  progress(
    `agent ${health.agentName} up with bundle v${health.bundleVersion}; pg user "${user}"; data dir ${agentDir}`,
  );
  const tokenNow = await freshToken();
  for (const p of [port, maskedPort])
    await waitUntil(
      "agent listener",
      async () => (await psql({ port: p, user, password: tokenNow }, "select 1", 10_000)).stdout.trim() === "1",
      30_000,
      500,
    );
  return {
    user,
    port,
    maskedPort,
    pid: agent.pid,
    cpPid: cp.pid,
    agent,
    cp,
    agentProblems,
    cpProblems,
    freshToken,
    dataDir: agentDir,
    health: async () =>
      (await fetch(`http://127.0.0.1:${adminPort}/healthz`, { signal: globalThis.AbortSignal.timeout(5_000) })).json(),
  };
}

/** Warnings and errors a pino-logging process printed (level >= 40), counted by message; non-JSON lines too. */
function collectProblems(proc) {
  const problems = new Map();
  proc.onLine((line) => {
    if (!line.trim()) return;
    let key;
    try {
      const entry = JSON.parse(line);
      if (typeof entry.level === "number" && entry.level < 40) return;
      const level = entry.level >= 50 ? "error" : "warn";
      const detail = entry.reason ?? entry.err?.message ?? entry.err ?? "";
      key = `${level}: ${entry.msg}${detail ? ` (${String(typeof detail === "string" ? detail : JSON.stringify(detail)).slice(0, 300)})` : ""}`;
    } catch {
      key = `output: ${line.slice(0, 300)}`;
    }
    problems.set(key, (problems.get(key) ?? 0) + 1);
  });
  return problems;
}

// ---------------------------------------------------------------------------------------------
// pgbench

function parsePgbench(text) {
  const num = (re) => Number(re.exec(text)?.[1] ?? NaN);
  return {
    tps: num(/^tps = ([\d.]+)/m),
    latencyMs: num(/^latency average = ([\d.]+) ms/m),
    connectMs: num(/^initial connection time = ([\d.]+) ms/m),
    transactions: num(/^number of transactions actually processed: (\d+)/m),
    failed: num(/^number of failed transactions: (\d+)/m),
  };
}

async function prepareTpcb(pgPort) {
  // What pgbench does before a TPC-B run unless -n (done directly, so every path starts alike).
  await psql(
    { port: pgPort },
    ["VACUUM pgbench_branches", "VACUUM pgbench_tellers", "TRUNCATE pgbench_history"],
    60_000,
  );
}

/** One pgbench run; resolves to parsed figures or { error }. */
async function pgbench(target, { mode, clients, protocol, cpuPid, cpPid, seconds = SECONDS }) {
  const argv = [
    "-n",
    "-T",
    String(seconds),
    "-c",
    String(clients),
    "-j",
    String(Math.min(clients, cpus().length)),
    "-M",
    protocol,
    ...(mode === "select" ? ["-S"] : []),
  ];
  // At 1 client every transaction's latency is logged (pgbench -l): p50 and p99, not just the mean.
  const logDir = clients === 1 ? mkdtempSync(join(WORK, "pgbench-log-")) : undefined;
  if (logDir) argv.push("-l", `--log-prefix=${join(logDir, "tx")}`);
  const cpuBefore = cpuMsOf(cpuPid);
  const cpBefore = cpuMsOf(cpPid);
  const load = loadavg()[0];
  try {
    const { stdout, stderr } = await run(TOOLS.pgbench, argv, {
      env: pgEnv(target),
      timeoutMs: seconds * 1000 + 90_000,
    });
    const r = parsePgbench(stdout);
    const cpuMs = cpuMsOf(cpuPid) - cpuBefore;
    const cpMs = cpuMsOf(cpPid) - cpBefore;
    if (!Number.isFinite(r.tps)) return { error: `no tps in pgbench output:\n${stdout}\n${stderr}`.trim(), load };
    if (r.failed > 0 || /error|abort/i.test(stderr))
      r.warning = `${r.failed || 0} failed transactions; stderr: ${stderr.trim().split("\n").slice(-5).join(" | ")}`;
    const perTx = (ms) => (r.transactions > 0 ? (ms * 1000) / r.transactions : NaN);
    return {
      ...r,
      ...(logDir ? latencyPercentiles(logDir) : {}),
      load,
      cpuUsPerTx: perTx(cpuMs),
      cpUsPerTx: perTx(cpMs),
    };
  } catch (error) {
    return { error: error.message.split("\n").slice(0, 20).join("\n"), load };
  } finally {
    if (logDir) rmSync(logDir, { recursive: true, force: true });
  }
}

/** p50 and p99 in µs from pgbench's per-transaction logs (third field: the latency in µs). */
function latencyPercentiles(dir) {
  const latencies = [];
  for (const file of readdirSync(dir))
    for (const line of readFileSync(join(dir, file), "utf8").split("\n")) {
      const us = Number(line.split(" ")[2]);
      if (line && Number.isFinite(us)) latencies.push(us);
    }
  if (latencies.length === 0) return {};
  latencies.sort((a, b) => a - b);
  const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
  return { p50Us: at(0.5), p99Us: at(0.99) };
}

// ---------------------------------------------------------------------------------------------
// Main

out(
  `pg-proxy: pgbench through proxies to one PostgreSQL; ${SECONDS} s per run, ${RUNS} interleaved run(s) per path and setting; ` +
    `clients ${CLIENTS.join(", ")}; modes ${MODE_LIST.join(", ")}; paths ${PATHS.join(", ")}`,
);
out(
  `host: ${cpus().length} cores (${cpus()[0]?.model ?? "?"}), node ${process.version}, 1-min load average ${loadavg()[0].toFixed(1)} at start ` +
    `(pgbench, PostgreSQL and the proxy share these cores: compare ratios, not absolute numbers)`,
);

const paths = new Map(); // name -> { port, user?, password(), pid, cpuPid }
const skipped = new Map(); // name -> reason
let pg;
let moat;
const agentMemory = {};
let exitCode = 0;

try {
  pg = await startPostgres();
  if (PATHS.includes("direct")) paths.set("direct", { port: pg.port });
  const tryStart = async (name, fn) => {
    if (!PATHS.includes(name)) return;
    try {
      progress(`starting ${name}`);
      paths.set(name, await fn());
    } catch (error) {
      skipped.set(name, error.message.split("\n").slice(0, 12).join("\n    "));
      progress(`SKIPPING ${name}: ${error.message}`);
    }
  };
  await tryStart("pgbouncer", async () => {
    const p = await startPgbouncer(pg.port);
    return { port: p.port, cpuPid: p.pid };
  });
  await tryStart("pgpool", async () => {
    const p = await startPgpool(pg.port, join(WORK, "pg", "data"));
    return { port: p.port };
  });
  await tryStart("pipe", async () => {
    const p = await startPipe(pg.port);
    return { port: p.port, cpuPid: p.pid };
  });
  if (PATHS.includes("agent") || PATHS.includes("agent-mask")) {
    try {
      progress("starting the Moat control plane and agent");
      moat = await startMoat(pg.port);
      const viaAgent = (port) => ({
        port,
        user: moat.user,
        password: () => moat.freshToken(),
        cpuPid: moat.pid,
        cpPid: moat.cpPid,
      });
      if (PATHS.includes("agent")) paths.set("agent", viaAgent(moat.port));
      if (PATHS.includes("agent-mask")) paths.set("agent-mask", viaAgent(moat.maskedPort));
      await sleep(2_000);
      agentMemory.idle = memoryOf(moat.pid);
      // V8 gives back part of its young generation once allocation has been low for some seconds
      // (its memory reducer): up to 30 s more, until the RSS has fallen by 4 MiB.
      for (let waited = 0; waited < 30; waited++) {
        agentMemory.settled = { ...memoryOf(moat.pid), after: waited + 2 };
        if (agentMemory.idle.rss - agentMemory.settled.rss >= 4096) break;
        await sleep(1_000);
      }
    } catch (error) {
      for (const name of ["agent", "agent-mask"])
        if (PATHS.includes(name)) skipped.set(name, error.message.split("\n").slice(0, 20).join("\n    "));
      progress(`SKIPPING the agent paths: ${error.message}`);
    }
  }
  // Sanity checks of the masking path, printed with the results.
  const checks = [];
  if (paths.has("agent-mask")) {
    const t = { port: moat.maskedPort, user: moat.user, password: await moat.freshToken() };
    for (const sql of [
      "SELECT aid, filler FROM pgbench_accounts ORDER BY aid LIMIT 1",
      "SELECT i, 'user'||i||'@example.com' FROM generate_series(1,2) i",
    ]) {
      try {
        checks.push(`${sql}\n      -> ${(await psql(t, sql)).stdout.trim().replace(/\n/g, " ; ")}`);
      } catch (error) {
        checks.push(`${sql}\n      -> FAILED: ${error.message.split("\n").slice(0, 4).join(" | ")}`);
      }
    }
  }

  const active = ALL_PATHS.filter((p) => paths.has(p));
  if (active.length === 0) throw new Error("no path could be started");

  // Settings: the main table (simple protocol), plus select-only at 8 clients with -M extended.
  const settings = [];
  for (const mode of MODE_LIST) for (const clients of CLIENTS) settings.push({ mode, clients, protocol: "simple" });
  if (MODE_LIST.includes("select") && !args["skip-extended"])
    settings.push({ mode: "select", clients: 8, protocol: "extended" });
  const total = settings.length * RUNS * active.length;
  progress(
    `${total} pgbench runs of ${SECONDS} s ahead (about ${Math.ceil((total * (SECONDS + 1.5)) / 60)} min)` +
      (args["skip-tls"] ? "" : " + TLS reference") +
      (args["skip-extra"] ? "" : " + the 1 M-row SELECT scenario"),
  );

  // Warm-up: one short run per path and mode (JIT, caches, pools), not counted.
  if (WARMUP > 0) {
    for (const mode of MODE_LIST)
      for (const name of active) {
        if (stopping) throw new Error("stopped");
        const p = paths.get(name);
        if (mode === "tpcb") await prepareTpcb(pg.port);
        const res = await pgbench(
          { port: p.port, user: p.user ?? "postgres", password: p.password ? await p.password() : undefined },
          { mode, clients: Math.min(8, MAX_CLIENTS), protocol: "simple", seconds: WARMUP },
        );
        progress(`warm-up ${MODES[mode]} ${name}: ${res.error ? `ERROR ${res.error}` : `${fmt(res.tps)} tps`}`);
      }
  }

  const results = new Map(); // key(setting) -> Map(path -> runs[])
  const key = (s) => `${s.mode}/${s.protocol}/${s.clients}`;
  const dead = new Set();
  let done = 0;
  for (const s of settings) {
    const byPath = new Map(active.map((p) => [p, []]));
    results.set(key(s), byPath);
    for (let r = 0; r < RUNS; r++) {
      const order = active.map((_, i) => active[(i + r + settings.indexOf(s)) % active.length]);
      for (const name of order) {
        if (stopping) throw new Error("stopped");
        done++;
        if (dead.has(name)) continue;
        const p = paths.get(name);
        if (s.mode === "tpcb") await prepareTpcb(pg.port);
        const target = {
          port: p.port,
          user: p.user ?? "postgres",
          password: p.password ? await p.password() : undefined,
        };
        const pause = PAUSE_CP && p.cpPid !== undefined;
        if (pause) {
          // The previous run's backlog is shipped first, so the control plane stays idle during this one.
          await waitUntil(
            "the agent's audit backlog shipped",
            async () => (await moat.health()).auditUnshipped === "0",
            180_000,
            250,
          );
          pausedCp = p.cpPid;
          signal(p.cpPid, "SIGSTOP");
        }
        let res;
        try {
          res = await pgbench(target, { ...s, cpuPid: p.cpuPid, cpPid: pause ? undefined : p.cpPid });
        } finally {
          if (pause) {
            signal(p.cpPid, "SIGCONT");
            pausedCp = undefined;
          }
        }
        byPath.get(name).push(res);
        const label = `${MODES[s.mode]} -M ${s.protocol} -c ${s.clients} run ${r + 1}/${RUNS} ${name}`;
        if (res.error) {
          progress(`[${done}/${total}] ${label}: ERROR ${res.error}`);
          if (name.startsWith("agent") && moat) {
            progress(`agent log tail:\n${moat.agent.tail().slice(-3000)}`);
            if (!moat.agent.alive()) {
              dead.add("agent");
              dead.add("agent-mask");
              progress("the agent died: skipping the agent paths from here");
            }
          }
        } else {
          progress(
            `[${done}/${total}] ${label}: ${fmt(res.tps)} tps, ${fmt(res.latencyMs, 3)} ms avg, load ${res.load.toFixed(1)}` +
              (res.warning ? ` WARNING ${res.warning}` : ""),
          );
        }
        if (moat && name.startsWith("agent")) {
          const m = memoryOf(moat.pid);
          agentMemory.peak = Math.max(agentMemory.peak ?? 0, m.hwm || 0);
        }
      }
    }
  }

  if (moat) {
    const h = await moat.health().catch(() => undefined);
    agentMemory.unshippedAfterMain = h?.auditUnshipped;
    agentMemory.afterMain = memoryOf(moat.pid);
  }

  // TLS reference: the agent with sslmode=require (client <-> agent TLS; agent -> PostgreSQL plaintext).
  const tlsResults = new Map();
  if (!args["skip-tls"] && MODE_LIST.includes("select")) {
    for (const name of ["agent", "agent-mask"]) {
      if (!paths.has(name) || dead.has(name)) continue;
      const p = paths.get(name);
      const res = await pgbench(
        { port: p.port, user: p.user, password: await p.password(), sslmode: "require" },
        { mode: "select", clients: 8, protocol: "simple", cpuPid: p.cpuPid },
      );
      tlsResults.set(name, res);
      progress(
        `TLS ${name} select-only -M simple -c 8: ` +
          (res.error ? `ERROR ${res.error}` : `${fmt(res.tps)} tps, ${fmt(res.latencyMs, 3)} ms`),
      );
    }
  }

  // Extra: a 1 M-row SELECT through psql, direct vs through the agent (masking on: every row holds an email).
  const extra = new Map();
  const EXTRA_SQL = "SELECT i, 'user'||i||'@example.com' FROM generate_series(1,1000000) i";
  let extraAgentPeak = NaN;
  if (!args["skip-extra"]) {
    const extraPaths = ["direct", "pipe", "agent", "agent-mask"].filter((n) => paths.has(n) && !dead.has(n));
    for (const n of extraPaths) extra.set(n, []);
    for (let r = 0; r < RUNS; r++) {
      const order = extraPaths.map((_, i) => extraPaths[(i + r) % extraPaths.length]);
      for (const name of order) {
        if (stopping) throw new Error("stopped");
        const p = paths.get(name);
        const env = pgEnv({
          port: p.port,
          user: p.user ?? "postgres",
          password: p.password ? await p.password() : undefined,
        });
        let sampler;
        if (name.startsWith("agent")) {
          sampler = setInterval(() => {
            const m = memoryOf(moat.pid);
            if (!(m.rss <= extraAgentPeak))
              extraAgentPeak = Math.max(Number.isFinite(extraAgentPeak) ? extraAgentPeak : 0, m.rss);
          }, 25);
        }
        const t0 = performance.now();
        const res = await timedPsql(env, EXTRA_SQL);
        const seconds = (performance.now() - t0) / 1000;
        clearInterval(sampler);
        extra.get(name).push(res.error ? { error: res.error } : { seconds });
        progress(
          `1 M-row SELECT via ${name} run ${r + 1}/${RUNS}: ${res.error ? `ERROR ${res.error}` : `${seconds.toFixed(2)} s`}`,
        );
      }
    }
  }
  if (moat && paths.has("agent") && SESSIONS > 0 && !stopping) {
    // Memory with many open sessions: SESSIONS psql clients connect through the agent, run one
    // query and stay connected (idle) while the agent's RSS is read.
    const p = paths.get("agent");
    const env = pgEnv({ port: p.port, user: p.user, password: await p.password() });
    const clients = [];
    for (let i = 0; i < SESSIONS; i++) {
      const child = spawn("psql", ["-X", "-A", "-t"], { env, stdio: ["pipe", "pipe", "pipe"] });
      commands.add(child);
      let output = "";
      const ready = new Promise((resolve) => {
        child.stdout.on("data", (c) => {
          output += c;
          if (output.includes("1")) resolve(true);
        });
        child.once("exit", () => resolve(false));
      });
      child.stdin.write("SELECT 1;\n");
      clients.push({ child, ready });
    }
    const ok = (await Promise.all(clients.map((c) => c.ready))).filter(Boolean).length;
    await sleep(1000);
    agentMemory.sessions = { open: ok, ...memoryOf(moat.pid) };
    progress(`${ok}/${SESSIONS} idle sessions open through the agent: RSS ${mib(agentMemory.sessions.rss)}`);
    await Promise.all(
      clients.map(
        ({ child }) =>
          new Promise((resolve) => {
            if (child.exitCode !== null) return resolve();
            child.once("exit", resolve);
            child.stdin.end();
          }),
      ),
    );
  }
  if (moat) {
    agentMemory.end = memoryOf(moat.pid);
    agentMemory.peak = Math.max(agentMemory.peak ?? 0, agentMemory.end.hwm || 0);
  }

  // ------------------------------------------------------------------------------------------
  // Report
  out();
  out(
    `PostgreSQL ${pg.version}, pgbench scale ${SCALE}; ${SECONDS} s runs; medians of ${RUNS} run(s); pgbench -j min(clients, cores)`,
  );
  if (moat) {
    const fs = await run("df", ["--output=fstype", moat.dataDir]).catch(() => undefined);
    const type = fs?.stdout.trim().split("\n").pop();
    out(
      `agent data dir (audit spool, written each turn, fsynced within 5 ms): ${moat.dataDir}${type ? ` (${type})` : ""}`,
    );
    out(`agent GLIBC_TUNABLES: ${args["agent-glibc-tunables"] || "(none: glibc's defaults)"}`);
    if (PAUSE_CP)
      out(
        "control plane paused (SIGSTOP) during each agent run of the main matrix, its backlog shipped between runs: " +
          "the agent's own cost, as with the control plane on another machine",
      );
  }
  for (const [name, reason] of skipped) out(`SKIPPED ${name}: ${reason}`);
  const stat = (runs, f) => median(runs.filter((x) => !x.error).map(f));
  const okCount = (runs) => `${runs.filter((x) => !x.error).length}/${runs.length}`;

  out();
  out("TPS (median) and latency average in ms (median), per path");
  const cols = ["mode", "proto", "clients", ...active.map((p) => `${p} tps / ms`)];
  const rows = [];
  for (const s of settings) {
    const byPath = results.get(key(s));
    rows.push([
      s.mode,
      s.protocol,
      String(s.clients),
      ...active.map((p) => {
        const runs = byPath.get(p);
        if (!runs.length) return "skipped";
        const ok = runs.filter((x) => !x.error).length;
        if (ok === 0) return "FAILED";
        return `${fmt(stat(runs, (x) => x.tps))} / ${fmt(
          stat(runs, (x) => x.latencyMs),
          3,
        )}${ok < runs.length ? ` (${okCount(runs)} ok)` : ""}`;
      }),
    ]);
  }
  table(cols, rows);

  out();
  out("TPS ratios (medians; <1 means slower than the reference)");
  const ratioDefs = [
    ["agent/pipe", "agent", "pipe"],
    ["agent/pgpool", "agent", "pgpool"],
    ["agent/direct", "agent", "direct"],
    ["agent-mask/agent", "agent-mask", "agent"],
    ["agent-mask/direct", "agent-mask", "direct"],
    ["pgbouncer/direct", "pgbouncer", "direct"],
    ["pgpool/direct", "pgpool", "direct"],
    ["pipe/direct", "pipe", "direct"],
  ].filter(([, a, b]) => paths.has(a) && paths.has(b));
  table(
    ["mode", "proto", "clients", ...ratioDefs.map(([label]) => label)],
    settings.map((s) => {
      const byPath = results.get(key(s));
      const tps = (p) => stat(byPath.get(p) ?? [], (x) => x.tps);
      return [s.mode, s.protocol, String(s.clients), ...ratioDefs.map(([, a, b]) => ratio(tps(a), tps(b)))];
    }),
  );

  const oneClient = settings.filter((s) => s.clients === 1);
  if (oneClient.length && paths.has("direct")) {
    out();
    out(
      "Added latency per query over direct at 1 client, in µs (from pgbench's latency average; " +
        "a TPC-B transaction is 7 statements, so its per-query figure is the per-transaction one / 7)",
    );
    const others = active.filter((p) => p !== "direct");
    table(
      ["mode", "proto", ...others.map((p) => `${p}`), "direct latency"],
      oneClient.map((s) => {
        const byPath = results.get(key(s));
        const lat = (p) => stat(byPath.get(p) ?? [], (x) => x.latencyMs);
        const perTx = s.mode === "tpcb" ? 7 : 1;
        const base = lat("direct");
        return [
          s.mode,
          s.protocol,
          ...others.map((p) => {
            const d = ((lat(p) - base) * 1000) / perTx;
            return Number.isFinite(d) ? `${d >= 0 ? "+" : ""}${fmt(d)}` : "n/a";
          }),
          `${fmt(base * 1000)} µs/tx`,
        ];
      }),
    );
    out();
    out(
      "Latency per transaction at 1 client, p50 / p99 in µs (pgbench -l: every transaction logged; medians over the runs), " +
        "and in brackets what each path adds over direct at p50 / p99",
    );
    table(
      ["mode", "proto", ...active],
      oneClient.map((s) => {
        const byPath = results.get(key(s));
        const pct = (p, f) => stat(byPath.get(p) ?? [], f);
        const add = (d) => (Number.isFinite(d) ? `${d >= 0 ? "+" : ""}${fmt(d)}` : "n/a");
        return [
          s.mode,
          s.protocol,
          ...active.map((p) => {
            const p50 = pct(p, (x) => x.p50Us);
            const p99 = pct(p, (x) => x.p99Us);
            if (!Number.isFinite(p50)) return "n/a";
            const extra =
              p === "direct"
                ? ""
                : ` (${add(p50 - pct("direct", (x) => x.p50Us))} / ${add(p99 - pct("direct", (x) => x.p99Us))})`;
            return `${fmt(p50)} / ${fmt(p99)}${extra}`;
          }),
        ];
      }),
    );
  }

  const cpuPaths = active.filter((p) => paths.get(p).cpuPid);
  if (cpuPaths.length) {
    out();
    const cpPaths = active.filter((p) => paths.get(p).cpPid);
    out(
      "Proxy process CPU per transaction, in µs (median; user+system of the proxy process only; " +
        "cp: the control plane's CPU during the agent's runs, mostly storing the audit trail, which lags behind)",
    );
    table(
      ["mode", "proto", "clients", ...cpuPaths, ...cpPaths.map((p) => `cp (${p})`)],
      settings.map((s) => {
        const byPath = results.get(key(s));
        return [
          s.mode,
          s.protocol,
          String(s.clients),
          ...cpuPaths.map((p) => fmt(stat(byPath.get(p), (x) => x.cpuUsPerTx))),
          ...cpPaths.map((p) => fmt(stat(byPath.get(p), (x) => x.cpUsPerTx))),
        ];
      }),
    );
  }

  if (tlsResults.size) {
    out();
    out("Agent with sslmode=require (TLS client <-> agent), select-only -M simple, 8 clients, 1 run");
    const plain = results.get("select/simple/8");
    table(
      ["path", "TLS tps", "TLS ms", "plaintext tps (median)", "TLS/plaintext"],
      [...tlsResults].map(([name, r]) => {
        const p = plain ? stat(plain.get(name) ?? [], (x) => x.tps) : NaN;
        return r.error
          ? [name, "FAILED", "", fmt(p), ""]
          : [name, fmt(r.tps), fmt(r.latencyMs, 3), fmt(p), ratio(r.tps, p)];
      }),
    );
  }

  if (extra.size) {
    out();
    out(`1 M-row SELECT through psql -At > /dev/null (${EXTRA_SQL}); median of ${RUNS}`);
    const directS = median((extra.get("direct") ?? []).filter((x) => !x.error).map((x) => x.seconds));
    table(
      ["path", "seconds", "rows/s", "vs direct"],
      [...extra].map(([name, runs]) => {
        const sec = median(runs.filter((x) => !x.error).map((x) => x.seconds));
        return [name, fmt(sec, 2), fmt(1e6 / sec), ratio(sec, directS).replace("x", "x time")];
      }),
    );
    if (Number.isFinite(extraAgentPeak))
      out(`agent RSS peak during the 1 M-row SELECTs (sampled every 25 ms): ${mib(extraAgentPeak)}`);
  }

  if (moat) {
    out();
    out(
      `agent RSS: idle ${mib(agentMemory.idle?.rss)} 2 s after start (anonymous ${mib(agentMemory.idle?.anon)}, files ${mib(agentMemory.idle?.file)}), ` +
        `${mib(agentMemory.settled?.rss)} ${agentMemory.settled?.after} s after (anonymous ${mib(agentMemory.settled?.anon)}), after the pgbench runs ${mib(agentMemory.afterMain?.rss)}, ` +
        (agentMemory.sessions
          ? `with ${agentMemory.sessions.open} idle sessions open ${mib(agentMemory.sessions.rss)}, `
          : "") +
        `at the end ${mib(agentMemory.end?.rss)}, peak ${mib(agentMemory.peak)} (VmHWM)`,
    );
    if (agentMemory.unshippedAfterMain !== undefined)
      out(
        `agent audit events not yet shipped to the control plane right after the pgbench runs: ${agentMemory.unshippedAfterMain}`,
      );
    const h = await moat.health().catch(() => undefined);
    if (h) out(`agent health at the end: bundle v${h.bundleVersion}, audit events not yet shipped ${h.auditUnshipped}`);
    for (const [label, problems] of [
      ["agent", moat.agentProblems],
      ["control plane", moat.cpProblems],
    ]) {
      const list = [...problems].sort((a, b) => b[1] - a[1]);
      out(`${label} warnings/errors: ${list.length ? "" : "none"}`);
      for (const [message, count] of list.slice(0, 12)) out(`  ${count}x ${message}`);
    }
  }
  if (checks.length) {
    out();
    out("masking checks through agent-mask:");
    for (const c of checks) out(`  ${c}`);
  }
  const failures = [...results.values()].flatMap((m) => [...m.values()].flat()).filter((x) => x.error);
  if (failures.length) {
    exitCode = 1;
    out();
    out(`${failures.length} pgbench run(s) failed; first errors:`);
    for (const f of failures.slice(0, 3)) out(`  ${f.error.replace(/\n/g, "\n  ")}`);
  }
  out(`total time ${((performance.now() - started) / 1000).toFixed(0)} s`);
} catch (error) {
  exitCode = 1;
  out(`pg-proxy: FAILED: ${error.stack ?? error.message}`);
} finally {
  progress("stopping everything");
  await cleanup();
}
process.exit(exitCode);

/** psql with its output to /dev/null; resolves when it exits. */
function timedPsql(env, sql) {
  return new Promise((resolve) => {
    const devnull = openSync("/dev/null", "w");
    const child = spawn(TOOLS.psql, ["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql], {
      env,
      stdio: ["ignore", devnull, "pipe"],
      detached: true,
    });
    groups.add(child.pid);
    let stderr = "";
    child.stderr.on("data", (c) => (stderr = (stderr + c).slice(-4000)));
    const timer = setTimeout(() => killGroup(child.pid), 300_000);
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      closeSync(devnull);
      groups.delete(child.pid);
      resolve(code === 0 ? {} : { error: `psql exit ${code ?? signal}: ${stderr.trim()}` });
    });
  });
}
