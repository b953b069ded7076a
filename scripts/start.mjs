#!/usr/bin/env node
// `npm start`: Moat on its embedded defaults in one terminal. Starts the control plane (SQLite store
// and CA in .moat/control-plane) and one local agent enrolled with it (.moat/agent), writes their
// JSON logs to .moat/logs, and prints where things are and what to do next. Ctrl-C stops both.
// MOAT_HOME moves .moat elsewhere; MOAT_HTTP_PORT, MOAT_GRPC_PORT and MOAT_AGENT_ADMIN_PORT move the ports.
//
// Secrets travel over the IPC channel, never through log files: the bootstrap admin key is printed
// here once, the local agent's enrolment token goes straight into the agent's environment.
import { fork } from "node:child_process";
import { existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const home = process.env.MOAT_HOME ?? join(root, ".moat");
const logs = join(home, "logs");
const agentDir = join(home, "agent");
mkdirSync(logs, { recursive: true });
mkdirSync(agentDir, { recursive: true, mode: 0o700 });

const adminPort = Number(process.env.MOAT_AGENT_ADMIN_PORT ?? 7072);
const bold = (s) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const rel = (p) => relative(process.cwd(), p) || ".";
const children = new Set();
let stopping = false;

function tail(file, lines = 15) {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "";
  }
}

function start(name, script, args, env) {
  const logFile = join(logs, `${name}.log`);
  const fd = openSync(logFile, "a");
  const child = fork(script, args, { cwd: root, env: { ...process.env, ...env }, stdio: ["ignore", fd, fd, "ipc"] });
  children.add(child);
  child.on("exit", (code, signal) => {
    children.delete(child);
    if (stopping) return;
    process.stderr.write(
      `\n${name} exited (${signal ?? `code ${code}`}). Last log lines (${rel(logFile)}):\n${tail(logFile)}\n`,
    );
    shutdown(1);
  });
  return child;
}

function shutdown(code) {
  if (stopping) return;
  stopping = true;
  for (const child of children) child.kill("SIGTERM");
  const deadline = setTimeout(() => process.exit(code), 8000);
  deadline.unref();
  const wait = () => (children.size === 0 ? process.exit(code) : setTimeout(wait, 50));
  wait();
}
process.on("SIGINT", () => {
  process.stdout.write("\nstopping Moat...\n");
  shutdown(0);
});
process.on("SIGTERM", () => shutdown(0));

function request(child, message, replyType) {
  return new Promise((resolve, reject) => {
    const onMessage = (m) => {
      if (m?.type !== replyType) return;
      child.off("message", onMessage);
      if (m.error) reject(new Error(m.error));
      else resolve(m);
    };
    child.on("message", onMessage);
    if (message) child.send(message);
  });
}

const cp = start("control-plane", join(root, "apps/control-plane/dist/main.js"), [], {
  MOAT_DATA_DIR: process.env.MOAT_DATA_DIR ?? join(home, "control-plane"),
  MOAT_LOCAL_AGENT: "true",
});
const ready = await request(cp, undefined, "moat.ready");

const agentConfig = join(agentDir, "agent.yaml");
if (!existsSync(agentConfig)) {
  writeFileSync(
    agentConfig,
    [
      "# Local agent started by `npm start`. See docs/configuration.md for every field.",
      `dataDir: ${agentDir}`,
      "admin:",
      `  port: ${adminPort}`,
      "resources: []",
      "# resources:",
      "#   - name: dev-db",
      "#     type: postgres",
      "#     listen: 127.0.0.1:6432",
      "#     labels: { env: dev }",
      "",
    ].join("\n"),
  );
}
// One malloc arena, freed memory returned past 64 KiB: less resident memory (docs/deployment.md, "Memory").
const agentEnv = {
  GLIBC_TUNABLES: process.env.GLIBC_TUNABLES ?? "glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=65536",
};
if (!existsSync(join(agentDir, "agent.json"))) {
  const { token } = await request(cp, { type: "moat.localAgentToken" }, "moat.localAgentToken");
  agentEnv.MOAT_AGENT_ENROLMENT_TOKEN = token;
}
start("agent", join(root, "apps/agent/dist/moat-agent.mjs"), ["--config", agentConfig], agentEnv);

let agentState = "starting";
for (let i = 0; i < 200 && agentState !== "connected" && !stopping; i++) {
  await new Promise((r) => setTimeout(r, 100));
  try {
    agentState = (await (await fetch(`http://127.0.0.1:${adminPort}/healthz`)).json()).controlPlane;
  } catch {
    // not listening yet
  }
}

const lines = [
  "",
  bold("Moat is running"),
  `  REST API        ${ready.httpUrl}   (OpenAPI: ${ready.httpUrl}/openapi.json)`,
  `  agent channel   ${ready.grpcAddress}   (gRPC, TLS; CA fingerprint ${ready.caFingerprint.slice(0, 16)}...)`,
  `  local agent     ${agentState === "connected" ? "connected" : `not connected yet (${agentState}); see ${rel(join(logs, "agent.log"))}`}   (health: http://127.0.0.1:${adminPort}/healthz)`,
  `  data            ${rel(home)}    logs: ${rel(logs)}`,
  "",
];
if (ready.bootstrap) {
  lines.push(
    bold("First start: bootstrap admin created"),
    `  user     ${ready.bootstrap.email}`,
    `  API key  ${ready.bootstrap.apiKey}`,
    "  This key is shown once and stored only as a hash. Keep it somewhere safe.",
    "",
  );
} else {
  lines.push(
    `Lost the admin API key? MOAT_DATA_DIR=${rel(join(home, "control-plane"))} node apps/control-plane/dist/main.js admin-key`,
    "",
  );
}
lines.push(
  bold("Next"),
  `  npm run moat -- login --server ${ready.httpUrl} --api-key <the admin API key>`,
  "  npm run moat -- status",
  "  npm run moat -- agents list",
  "  npm run moat -- agents create edge-1     # then run an agent elsewhere with its token (docs/deployment.md)",
  "",
  "Ctrl-C stops Moat.",
  "",
);
process.stdout.write(lines.join("\n"));
