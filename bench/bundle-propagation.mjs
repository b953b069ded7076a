#!/usr/bin/env node
// Policy change -> bundle at the agent: how long after a PUT /api/v1/policies/:name each connected
// agent's stream receives the bundle at the new version (median, p99 and last agent per change),
// and how long until the control plane has recorded every agent's ack (GET /api/v1/agents).
// Measured with 1 and with 1 000 simulated agents on one control plane (the built dist/, started
// here on free loopback ports with a throwaway data dir), K policy changes each, and the medians of
// the per-change figures reported. Also prints the control plane's RSS with the agents connected.
//
// The simulated agents live in this process: each enrols over gRPC (a token from POST
// /api/v1/agents), opens its own Connect stream (one HTTP/2 connection per --per-channel agents),
// announces one postgres resource labelled env=bench, heartbeats at the interval from Welcome and
// acks every bundle it receives. A timestamp is taken when the stream delivers the decoded bundle
// (signature verification and apply on a real agent come on top, well under a millisecond).
//
// Run: pnpm build && node bench/bundle-propagation.mjs [--agents 1,1000] [--runs 7]
// Progress goes to stderr, results to stdout. Everything is bounded: the script stops by itself.
import { spawn } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import * as grpc from "@grpc/grpc-js";
import {
  agentServiceDefinition,
  BundleSchema,
  ConnectRequestSchema,
  create,
  EnrolRequestSchema,
  fromBinary,
  ResourceType,
  timestampFromDate,
} from "@moat/proto";
import { freePort, tempDir } from "@moat/testkit";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const CONTROL_PLANE_MAIN = join(ROOT, "apps/control-plane/dist/main.js");

const USAGE = `usage: node bench/bundle-propagation.mjs [options]
  --agents LIST        agent counts to measure, comma-separated (default 1,1000)
  --runs K             measured policy changes per agent count, after one warm-up (default 7)
  --per-channel M      agents sharing one gRPC channel / HTTP/2 connection (default 100)
  --concurrency C      parallel REST creations and enrolments (default 8)
  --max-minutes T      hard stop for the whole script (default 45)
  --cp-node-args ARGS  extra node flags for the control plane, space-separated
                       (e.g. --cp-node-args="--cpu-prof --cpu-prof-dir=/tmp/prof" to profile it)`;

let args;
try {
  args = parseArgs({
    options: {
      agents: { type: "string", default: "1,1000" },
      runs: { type: "string", default: "7" },
      "per-channel": { type: "string", default: "100" },
      concurrency: { type: "string", default: "8" },
      "max-minutes": { type: "string", default: "45" },
      "cp-node-args": { type: "string", default: "" },
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
const positiveInt = (name, text) => {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) {
    process.stderr.write(`--${name} must be a positive integer, got "${text}"\n${USAGE}\n`);
    process.exit(2);
  }
  return n;
};
const AGENT_COUNTS = args.agents.split(",").map((s) => positiveInt("agents", s.trim()));
const RUNS = positiveInt("runs", args.runs);
const PER_CHANNEL = positiveInt("per-channel", args["per-channel"]);
const CONCURRENCY = positiveInt("concurrency", args.concurrency);
const MAX_MINUTES = positiveInt("max-minutes", args["max-minutes"]);
const CP_NODE_ARGS = args["cp-node-args"].split(" ").filter(Boolean);

// Bounds (generous: a 2-core box enrolling 1 000 agents takes a while).
const READY_TIMEOUT_MS = 30_000;
const REST_TIMEOUT_MS = 30_000;
const ENROL_DEADLINE_MS = 30_000;
const INITIAL_BUNDLE_TIMEOUT_MS = 120_000;
const PROPAGATION_TIMEOUT_MS = 120_000;
const ACK_TIMEOUT_MS = 120_000;
const ACK_POLL_MS = 50;
const PAUSE_BETWEEN_CHANGES_MS = 1_000;
const OPEN_CONCURRENCY = 50;

// grpc-js sets the TLS servername to the IP it dials and Node warns about it (DEP0123): noise here.
process.noDeprecation = true;

const started = performance.now();
const progress = (message) =>
  process.stderr.write(`[${((performance.now() - started) / 1000).toFixed(1).padStart(6)} s] ${message}\n`);
const out = (line = "") => process.stdout.write(`${line}\n`);

// ---------------------------------------------------------------------------------------------
// Small helpers

/** Nearest-rank percentile of an ascending array. */
function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))];
}
function median(values) {
  const xs = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (xs.length === 0) return NaN;
  const mid = Math.floor(xs.length / 2);
  return xs.length % 2 ? xs[mid] : (xs[mid - 1] + xs[mid]) / 2;
}
const ms = (v) => (Number.isFinite(v) ? `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ms` : "n/a");
const mib = (kib) => (Number.isFinite(kib) ? `${(kib / 1024).toFixed(0)} MiB` : "n/a");

async function withTimeout(promise, timeoutMs, what) {
  let timer;
  try {
    return await Promise.race([
      promise,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no result within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs `fn` over `items` with at most `limit` in flight. */
async function pool(items, limit, fn) {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const index = next++;
      await fn(items[index], index);
    }
  });
  await Promise.all(workers);
}

/** Polls `check` (in-memory, cheap) until truthy or `timeoutMs` passes; returns the last value. */
async function until(check, timeoutMs, intervalMs = 5) {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value || performance.now() > deadline) return value;
    await sleep(intervalMs);
  }
}

/** VmRSS and VmHWM of a process, in KiB. */
function memoryOf(pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const field = (name) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN);
    return { rss: field("VmRSS"), hwm: field("VmHWM") };
  } catch {
    return { rss: NaN, hwm: NaN };
  }
}

/** User+system CPU time of a process, in ms (clock ticks are 1/100 s on Linux). */
function cpuMsOf(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return NaN;
  }
}

// ---------------------------------------------------------------------------------------------
// The control plane as a child process

const children = new Set();

async function startControlPlane() {
  const dataDir = tempDir("moat-bench-cp-");
  const keyFile = join(dataDir, "admin.key");
  const httpPort = await freePort();
  const grpcPort = await freePort();
  const child = spawn(process.execPath, [...CP_NODE_ARGS, CONTROL_PLANE_MAIN], {
    cwd: ROOT,
    env: {
      ...process.env,
      MOAT_DATA_DIR: dataDir,
      MOAT_HTTP_HOST: "127.0.0.1",
      MOAT_HTTP_PORT: String(httpPort),
      MOAT_GRPC_HOST: "127.0.0.1",
      MOAT_GRPC_PORT: String(grpcPort),
      MOAT_BOOTSTRAP_ADMIN_KEY_FILE: keyFile,
      MOAT_LOG_LEVEL: "warn",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  const exited = new Promise((resolve) =>
    child.on("exit", (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    }),
  );

  // Warnings and errors it logs (pino JSON, level >= 40), counted by message; raw tail kept.
  const problems = new Map();
  let tail = "";
  let partial = "";
  const onOutput = (chunk) => {
    const text = chunk.toString();
    tail = (tail + text).slice(-8000);
    const lines = (partial + text).split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) {
      if (!line.trim()) continue;
      let key;
      try {
        const entry = JSON.parse(line);
        if (typeof entry.level === "number" && entry.level < 40) continue;
        const level = entry.level >= 50 ? "error" : "warn";
        const detail = entry.reason ?? entry.err?.message ?? "";
        key = `${level}: ${entry.msg}${detail ? ` (${String(detail).slice(0, 160)})` : ""}`;
      } catch {
        key = `output: ${line.slice(0, 200)}`;
      }
      problems.set(key, (problems.get(key) ?? 0) + 1);
    }
  };
  child.stdout.on("data", onOutput);
  child.stderr.on("data", onOutput);

  const url = `http://127.0.0.1:${httpPort}`;
  const deadline = performance.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(`the control plane exited during start:\n${tail}`);
    try {
      const res = await fetch(`${url}/readyz`, { signal: globalThis.AbortSignal.timeout(2_000) });
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (performance.now() > deadline)
      throw new Error(`the control plane was not ready within ${READY_TIMEOUT_MS} ms:\n${tail}`);
    await sleep(100);
  }
  const adminKey = readFileSync(keyFile, "utf8").trim();
  const caPem = readFileSync(join(dataDir, "pki", "ca.crt"));

  async function api(method, path, body) {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${adminKey}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: globalThis.AbortSignal.timeout(REST_TIMEOUT_MS),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${text.slice(0, 500)}`);
    return text ? JSON.parse(text) : undefined;
  }

  return {
    pid: child.pid,
    grpcAddress: `127.0.0.1:${grpcPort}`,
    caPem,
    api,
    problems,
    tail: () => tail,
    alive: () => child.exitCode === null && child.signalCode === null,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

function killChildren() {
  for (const child of children) child.kill("SIGKILL");
}
process.on("exit", killChildren);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    killChildren();
    process.exit(130);
  });
}
const hardStop = setTimeout(() => {
  process.stderr.write(`bundle-propagation: still running after ${MAX_MINUTES} min; stopping\n`);
  killChildren();
  process.exit(1);
}, MAX_MINUTES * 60_000);
hardStop.unref();

// ---------------------------------------------------------------------------------------------
// Simulated agents

const AgentClient = grpc.makeGenericClientConstructor(agentServiceDefinition, "AgentService");

function newClient(cp) {
  // A local subchannel pool: every client gets its own HTTP/2 connection instead of sharing one.
  return new AgentClient(cp.grpcAddress, grpc.credentials.createSsl(cp.caPem), {
    "grpc.use_local_subchannel_pool": 1,
  });
}

function enrol(client, token, hostname) {
  return new Promise((resolve, reject) => {
    client.enrol(
      create(EnrolRequestSchema, { enrolmentToken: token, agentVersion: "bench", hostname }),
      { deadline: Date.now() + ENROL_DEADLINE_MS },
      (error, response) => (error ? reject(new Error(`enrol: ${error.details || error.message}`)) : resolve(response)),
    );
  });
}

/**
 * The simulated fleet's state. Per agent: the arrival time (performance.now()) of the first bundle
 * at each version it received.
 */
class Fleet {
  constructor(cp) {
    this.cp = cp;
    this.agents = [];
    this.clients = [];
    this.drops = [];
    this.closing = false;
  }

  clientFor(index) {
    const slot = Math.floor(index / PER_CHANNEL);
    while (this.clients.length <= slot) this.clients.push(newClient(this.cp));
    return this.clients[slot];
  }

  /** Opens agent `agent`'s stream; resolves when its first bundle arrived. */
  open(agent) {
    return new Promise((resolve, reject) => {
      const metadata = new grpc.Metadata();
      metadata.set("authorization", `Bearer ${agent.credential}`);
      const call = this.clientFor(agent.index).connect(metadata);
      agent.call = call;
      agent.live = true;
      agent.maxMark = 0n;
      agent.arrivals = new Map();
      call.on("data", (message) => {
        const kind = message.kind;
        if (kind.case === "bundle") {
          const at = performance.now();
          const bundle = fromBinary(BundleSchema, kind.value.payload);
          const version = bundle.version;
          call.write(create(ConnectRequestSchema, { kind: { case: "bundleAck", value: { version, applied: true } } }));
          // Bundle versions are per agent; which change a bundle carries is read from its policy.
          const mark = markOf(bundle);
          if (mark > agent.maxMark) {
            agent.maxMark = mark;
            agent.arrivals.set(mark, at);
          }
          resolve();
        } else if (kind.case === "welcome") {
          const everyMs = Math.max(1, kind.value.heartbeatIntervalSeconds || 10) * 1000;
          clearInterval(agent.heartbeat);
          agent.heartbeat = setInterval(
            () =>
              call.write(
                create(ConnectRequestSchema, {
                  kind: { case: "heartbeat", value: { sentAt: timestampFromDate(new Date()) } },
                }),
              ),
            everyMs,
          );
        } else if (kind.case === "resourceRejected") {
          reject(new Error(`agent ${agent.name}: resource rejected: ${kind.value.reason}`));
        }
      });
      call.on("error", () => undefined); // "status" follows and decides
      call.on("status", (status) => {
        clearInterval(agent.heartbeat);
        agent.live = false;
        if (!this.closing) {
          this.drops.push({
            agent: agent.name,
            code: grpc.status[status.code] ?? status.code,
            details: status.details,
          });
          reject(new Error(`agent ${agent.name}: stream ended: ${grpc.status[status.code]} ${status.details}`));
        }
      });
      call.write(
        create(ConnectRequestSchema, {
          kind: {
            case: "hello",
            value: {
              agentVersion: "bench",
              hostname: agent.hostname,
              resources: [
                {
                  name: `bench-db-${agent.index}`,
                  type: ResourceType.POSTGRES,
                  labels: [{ key: "env", value: "bench" }],
                  listenAddress: `127.0.0.1:${10_000 + agent.index}`,
                },
              ],
            },
          },
        }),
      );
    });
  }

  live() {
    return this.agents.filter((a) => a.live);
  }

  /** When agent `a` first received a bundle holding change `mark` or a later one. */
  arrivalOf(agent, mark) {
    let best = Infinity;
    for (const [m, at] of agent.arrivals) if (m >= mark && at < best) best = at;
    return best;
  }

  async close() {
    this.closing = true;
    const agents = this.agents.filter(Boolean); // holes when enrolment failed part-way
    for (const agent of agents) {
      clearInterval(agent.heartbeat);
      agent.call?.end();
    }
    await sleep(200);
    for (const agent of agents) agent.call?.cancel();
    for (const client of this.clients) client.close();
  }
}

// ---------------------------------------------------------------------------------------------
// One agent count: start, enrol, connect, K policy changes, stop

const POLICY_NAME = "bench-propagation";
/** Which change a bundle holds: iteration + 1 of the bench policy's table name, 0 without it. */
function markOf(bundle) {
  let mark = 0n;
  for (const doc of bundle.policyDocuments) {
    const m = /bench_(\d+)/.exec(doc);
    if (m) mark = BigInt(m[1]) + 1n;
  }
  return mark;
}

function policy(iteration) {
  return {
    apiVersion: "moat.dev/v1",
    kind: "Policy",
    metadata: { name: POLICY_NAME },
    spec: {
      subjects: { groups: ["bench"] },
      resources: { types: ["postgres"], labels: { env: "bench" } },
      rules: [
        { name: "read", effect: "allow", actions: ["connect", "db:read"], tables: [`public.bench_${iteration}`] },
      ],
    },
  };
}

async function measure(n) {
  progress(`N=${n}: starting the control plane`);
  const cp = await startControlPlane();
  const fleet = new Fleet(cp);
  const result = { n, runs: [], drops: fleet.drops, problems: cp.problems };
  try {
    result.idleMemory = memoryOf(cp.pid);

    // 1. Create the agents over REST.
    let t = performance.now();
    let done = 0;
    const tokens = new Array(n);
    const names = Array.from({ length: n }, (_, i) => `bench-agent-${i}`);
    await pool(names, CONCURRENCY, async (name, i) => {
      const created = await cp.api("POST", "/api/v1/agents", { name });
      tokens[i] = created.enrolmentToken;
      if (++done % 100 === 0 || done === n) progress(`N=${n}: created ${done}/${n} agents`);
    });
    result.createMs = performance.now() - t;

    // 2. Enrol them over gRPC.
    t = performance.now();
    done = 0;
    const enrolClients = Array.from({ length: Math.min(4, n) }, () => newClient(cp));
    await pool(names, CONCURRENCY, async (name, i) => {
      const hostname = `bench-host-${i}`;
      const response = await enrol(enrolClients[i % enrolClients.length], tokens[i], hostname);
      fleet.agents[i] = { index: i, name, hostname, id: response.agentId, credential: response.credential };
      if (++done % 100 === 0 || done === n) progress(`N=${n}: enrolled ${done}/${n} agents`);
    });
    for (const client of enrolClients) client.close();
    result.enrolMs = performance.now() - t;

    // 3. Open the streams; each is up once its first bundle arrived.
    t = performance.now();
    done = 0;
    await pool(fleet.agents, OPEN_CONCURRENCY, async (agent) => {
      await withTimeout(fleet.open(agent), INITIAL_BUNDLE_TIMEOUT_MS, `agent ${agent.name}: first bundle`);
      if (++done % 100 === 0 || done === n) progress(`N=${n}: ${done}/${n} streams up with their first bundle`);
    });
    result.connectMs = performance.now() - t;
    result.channels = fleet.clients.length;

    // The control plane has recorded every initial ack (and the fleet is quiet) before measuring.
    await waitForAcks(cp, fleet, (a) => a.bundleVersion !== "0");
    await sleep(PAUSE_BETWEEN_CHANGES_MS);
    result.connectedMemory = memoryOf(cp.pid);
    progress(`N=${n}: all connected with their first bundle; control plane RSS ${mib(result.connectedMemory.rss)}`);

    // 4. Warm-up change, then RUNS measured changes.
    for (let iteration = 0; iteration <= RUNS; iteration++) {
      const run = await change(cp, fleet, iteration);
      if (iteration === 0) {
        progress(`N=${n}: warm-up change done (${describe(run)})`);
      } else {
        result.runs.push(run);
        out(`N=${String(n).padStart(4)} run ${iteration}/${RUNS}: ${describe(run)}`);
      }
      if (!cp.alive()) throw new Error(`the control plane died:\n${cp.tail()}`);
      await sleep(PAUSE_BETWEEN_CHANGES_MS);
    }
    result.peakMemory = memoryOf(cp.pid);
  } catch (error) {
    result.error = error.message;
    out(`N=${n}: FAILED: ${error.message}`);
  } finally {
    await fleet.close();
    await cp.stop();
  }
  return result;
}

/** Polls GET /api/v1/agents until every live bench agent's acknowledged state satisfies `done`. */
async function waitForAcks(cp, fleet, done) {
  const ids = new Set(fleet.live().map((a) => a.id));
  const deadline = performance.now() + ACK_TIMEOUT_MS;
  for (;;) {
    const { items } = await cp.api("GET", "/api/v1/agents");
    const at = performance.now();
    const behind = items.filter((a) => ids.has(a.id) && !done(a)).length;
    if (behind === 0) return at;
    if (at > deadline) throw new Error(`${behind} agents' acks not recorded within ${ACK_TIMEOUT_MS} ms`);
    await sleep(ACK_POLL_MS);
  }
}

/** One policy change: PUT, then when each live agent received it, then when all acks are recorded. */
async function change(cp, fleet, iteration) {
  const expected = fleet.live();
  const load = loadavg()[0];
  const cpuBefore = cpuMsOf(cp.pid);
  const elu = performance.eventLoopUtilization();
  const t0 = performance.now();
  const view = await cp.api("PUT", `/api/v1/policies/${POLICY_NAME}`, policy(iteration));
  const putMs = performance.now() - t0;
  const version = BigInt(view.revision);
  const mark = BigInt(iteration) + 1n;

  // Every agent has it, or lost its stream (counted as a drop).
  const settled = () => expected.every((a) => a.maxMark >= mark || !a.live);
  await until(settled, PROPAGATION_TIMEOUT_MS);
  const latencies = expected
    .map((a) => fleet.arrivalOf(a, mark) - t0)
    .filter(Number.isFinite)
    .sort((a, b) => a - b);
  const clientElu = performance.eventLoopUtilization(elu).utilization;
  const run = {
    version,
    putMs,
    received: latencies.length,
    expected: expected.length,
    first: latencies[0] ?? NaN,
    median: percentile(latencies, 0.5),
    p99: percentile(latencies, 0.99),
    last: latencies.length === expected.length ? latencies[latencies.length - 1] : NaN,
    clientElu,
    load,
  };
  if (latencies.length < expected.length) {
    run.error = `only ${latencies.length}/${expected.length} agents received v${version} within ${PROPAGATION_TIMEOUT_MS} ms`;
    return run;
  }
  try {
    run.acksMs = (await waitForAcks(cp, fleet, (a) => BigInt(a.policyRevision ?? "0") >= version)) - t0;
  } catch (error) {
    run.error = error.message;
  }
  run.cpCpuMs = cpuMsOf(cp.pid) - cpuBefore;
  return run;
}

function describe(run) {
  const parts = [
    `v${run.version}`,
    `PUT answered ${ms(run.putMs)}`,
    `received first ${ms(run.first)} median ${ms(run.median)} p99 ${ms(run.p99)} last ${ms(run.last)} (${run.received}/${run.expected})`,
    `acks recorded ${ms(run.acksMs)}`,
    `cp cpu ${ms(run.cpCpuMs)}`,
    `bench loop ${(run.clientElu * 100).toFixed(0)}% busy`,
    `load ${run.load.toFixed(1)}`,
  ];
  return parts.join(" | ") + (run.error ? ` | ERROR ${run.error}` : "");
}

// ---------------------------------------------------------------------------------------------
// Main

out(
  `bundle propagation: policy PUT -> bundle received by each agent's stream; agents ${AGENT_COUNTS.join(", ")}; ` +
    `${RUNS} measured changes each (+1 warm-up); ${PER_CHANNEL} agents per gRPC connection`,
);
out(
  `host: ${cpus().length} cores, node ${process.version}, 1-min load average ${loadavg()[0].toFixed(1)} at start ` +
    `(other work on the box inflates the numbers: compare medians, and the load column of each run)`,
);
const results = [];
for (const n of AGENT_COUNTS) results.push(await measure(n));

out();
out(`summary: medians over the measured changes (min-max of the per-change value in brackets)`);
const range = (values) => {
  const xs = values.filter(Number.isFinite);
  return xs.length ? `[${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)}]` : "";
};
const columns = ["agents", "ok runs", "PUT answered", "first agent", "median", "p99", "last agent", "acks recorded"];
const rows = results.map((r) => {
  const ok = r.runs.filter((x) => !x.error);
  const cell = (key) => `${ms(median(ok.map((x) => x[key])))} ${range(ok.map((x) => x[key]))}`;
  return [
    String(r.n),
    `${ok.length}/${RUNS}`,
    cell("putMs"),
    cell("first"),
    cell("median"),
    cell("p99"),
    cell("last"),
    cell("acksMs"),
  ];
});
const widths = columns.map((c, i) => Math.max(c.length, ...rows.map((row) => row[i].length)));
const line = (cells) =>
  cells
    .map((c, i) => c.padEnd(widths[i]))
    .join("  ")
    .trimEnd();
out(line(columns));
out(line(widths.map((w) => "-".repeat(w))));
for (const row of rows) out(line(row));

out();
for (const r of results) {
  out(`N=${r.n}:`);
  if (r.createMs !== undefined)
    out(
      `  setup: created in ${(r.createMs / 1000).toFixed(1)} s, enrolled in ${((r.enrolMs ?? NaN) / 1000).toFixed(1)} s, ` +
        `${r.channels ?? "?"} gRPC connection(s) opened + first bundle in ${((r.connectMs ?? NaN) / 1000).toFixed(1)} s`,
    );
  out(
    `  control plane RSS: ${mib(r.idleMemory?.rss)} idle, ${mib(r.connectedMemory?.rss)} with ${r.n} agent(s) connected, ` +
      `peak ${mib(r.peakMemory?.hwm)} (VmHWM)`,
  );
  const ok = r.runs.filter((x) => !x.error);
  if (ok.length)
    out(
      `  per change: control-plane CPU ${ms(median(ok.map((x) => x.cpCpuMs)))}, bench process event loop ` +
        `${(median(ok.map((x) => x.clientElu)) * 100).toFixed(0)}% busy (medians)`,
    );
  out(
    `  stream drops: ${r.drops.length}` +
      (r.drops.length
        ? ` (${r.drops
            .slice(0, 5)
            .map((d) => `${d.agent} ${d.code} ${d.details}`)
            .join("; ")})`
        : ""),
  );
  const problems = [...r.problems].sort((a, b) => b[1] - a[1]);
  out(`  control plane warnings/errors: ${problems.length ? "" : "none"}`);
  for (const [message, count] of problems.slice(0, 10)) out(`    ${count}x ${message}`);
  if (r.error) out(`  FAILED: ${r.error}`);
}
out(`total time ${((performance.now() - started) / 1000).toFixed(0)} s`);

const failed = results.some((r) => r.error || r.drops.length > 0 || r.runs.some((x) => x.error));
process.exit(failed ? 1 : 0);
