/**
 * Real processes for end-to-end tests: the built control plane and agent (dist/), started with
 * their own data dirs and free ports, plus a tiny REST client. Every process is killed by `cleanup`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { freePort, tempDir, waitFor } from "@moat/testkit";

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const controlPlaneMain = join(repoRoot, "apps/control-plane/dist/main.js");
const agentMain = join(repoRoot, "apps/agent/dist/moat-agent.mjs");

const live = new Set<ChildProcess>();

export interface Proc {
  child: ChildProcess;
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Sends `signal` and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function spawnNode(script: string, args: string[], env: Record<string, string>, cwd = repoRoot): Proc {
  const child = spawn(process.execPath, [script, ...args], {
    cwd,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  live.add(child);
  let output = "";
  child.stdout?.on("data", (c: Buffer) => (output += c.toString()));
  child.stderr?.on("data", (c: Buffer) => (output += c.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on("exit", (code, signal) => {
      live.delete(child);
      resolve({ code, signal });
    });
  });
  return {
    child,
    output: () => output,
    exited,
    async stop(signal: NodeJS.Signals = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** Kills every process a test started (SIGKILL), for afterEach/afterAll. */
export async function cleanup(): Promise<void> {
  const waits = [...live].map(
    (child) =>
      new Promise((r) =>
        child.exitCode !== null || child.signalCode !== null ? r(null) : (child.once("exit", r), child.kill("SIGKILL")),
      ),
  );
  await Promise.all(waits);
}

export interface ControlPlaneProc extends Proc {
  url: string;
  grpcAddress: string;
  dataDir: string;
  /** The bootstrap admin key; "" when the store already had users (no bootstrap). */
  adminKey: string;
  env: Record<string, string>;
}

type ControlPlaneOptions = { dataDir?: string; httpPort?: number; grpcPort?: number; env?: Record<string, string> };

/** The control plane could not bind a port picked for it (another test's process took it first). */
class PortTaken extends Error {}

/**
 * Starts the built control plane; waits until /readyz answers. Reuse `dataDir`/ports to restart it.
 * Ports it picks itself (freePort) can be taken by another test's process before the control plane
 * binds them: it then tries other ones (twice at most).
 */
export async function startControlPlane(options: ControlPlaneOptions = {}): Promise<ControlPlaneProc> {
  const picked = options.httpPort === undefined && options.grpcPort === undefined;
  for (let attempt = 1; ; attempt++) {
    try {
      return await startControlPlaneOnce(options);
    } catch (error) {
      if (!(error instanceof PortTaken) || !picked || attempt >= 3) throw error;
    }
  }
}

async function startControlPlaneOnce(options: ControlPlaneOptions): Promise<ControlPlaneProc> {
  const dataDir = options.dataDir ?? tempDir("moat-cp-");
  const httpPort = options.httpPort ?? (await freePort());
  const grpcPort = options.grpcPort ?? (await freePort());
  const keyFile = join(dataDir, "..", `${dataDir.split("/").pop()}-admin.key`);
  const env = {
    MOAT_DATA_DIR: dataDir,
    MOAT_HTTP_PORT: String(httpPort),
    MOAT_GRPC_PORT: String(grpcPort),
    MOAT_BOOTSTRAP_ADMIN_KEY_FILE: keyFile,
    MOAT_LOG_LEVEL: "debug",
    ...options.env,
  };
  const proc = spawnNode(controlPlaneMain, [], env);
  const url = `http://127.0.0.1:${httpPort}`;
  const ready = await waitFor(async () => {
    if (proc.child.exitCode !== null) return "exited";
    return (await fetch(`${url}/readyz`)).ok && "ready";
  }, 20_000).catch((error: unknown) => {
    throw new Error(`control plane not ready: ${(error as Error).message}\n${proc.output()}`);
  });
  if (ready === "exited") {
    const message = `control plane exited: ${proc.output()}`;
    throw proc.output().includes("EADDRINUSE") ? new PortTaken(message) : new Error(message);
  }
  return {
    ...proc,
    url,
    grpcAddress: `127.0.0.1:${grpcPort}`,
    dataDir,
    adminKey: existsSync(keyFile) ? readFileSync(keyFile, "utf8").trim() : "",
    env,
  };
}

export interface AgentProc extends Proc {
  dataDir: string;
  adminPort: number;
  configFile: string;
  health(): Promise<{ controlPlane: string; agentId: string; agentName: string }>;
}

/** Writes an agent config and starts the built agent. */
export async function startAgent(options: {
  token?: string;
  dataDir?: string;
  yaml?: string;
  env?: Record<string, string>;
  /** Serve POST /v1/decide on the admin port. */
  decisionEndpoint?: boolean;
}): Promise<AgentProc> {
  const dataDir = options.dataDir ?? tempDir("moat-agent-");
  const adminPort = await freePort();
  const configFile = join(dataDir, "agent.yaml");
  const admin = `admin:\n  port: ${adminPort}\n  decisionEndpoint: ${options.decisionEndpoint === true}\n`;
  writeFileSync(configFile, `dataDir: ${dataDir}\n${admin}${options.yaml ?? ""}`);
  const proc = spawnNode(agentMain, ["--config", configFile], {
    MOAT_AGENT_LOG_LEVEL: "debug",
    ...(options.token ? { MOAT_AGENT_ENROLMENT_TOKEN: options.token } : {}),
    ...options.env,
  });
  return {
    ...proc,
    dataDir,
    adminPort,
    configFile,
    health: async () =>
      (await fetch(`http://127.0.0.1:${adminPort}/healthz`)).json() as Promise<{
        controlPlane: string;
        agentId: string;
        agentName: string;
      }>,
  };
}

/** Calls the REST API; returns status and parsed body. */
export async function api<T = Record<string, unknown>>(
  cp: { url: string; adminKey: string },
  method: string,
  path: string,
  body?: unknown,
  key = cp.adminKey,
): Promise<{ status: number; body: T }> {
  const res = await fetch(`${cp.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body !== undefined ? { "content-type": "application/json" } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T };
}

export interface AgentView {
  id: string;
  name: string;
  state: string;
  connected: boolean;
  version: string;
  bundleVersion: string;
  policyRevision: string;
  bundleKeyId: string;
  bundleError: string;
}

export async function createAgent(cp: ControlPlaneProc, name: string): Promise<{ id: string; token: string }> {
  const res = await api<{ agent: AgentView; enrolmentToken: string }>(cp, "POST", "/api/v1/agents", { name });
  if (res.status !== 201) throw new Error(`create agent: ${res.status} ${JSON.stringify(res.body)}`);
  return { id: res.body.agent.id, token: res.body.enrolmentToken };
}

export async function getAgent(cp: ControlPlaneProc, id: string): Promise<AgentView> {
  return (await api<AgentView>(cp, "GET", `/api/v1/agents/${id}`)).body;
}

export interface PostgresStack {
  cp: ControlPlaneProc;
  agent: AgentProc;
  agentId: string;
  /** The agent's Postgres listener port. */
  listen: number;
  /** The agent's config, to start it again on the same data dir. */
  yaml: string;
  /** A fresh access token of the stack's user. */
  token(): Promise<string>;
}

/**
 * A control plane and an enrolled agent fronting `database` of a PostgreSQL server as resource
 * `resource` (plaintext to the target), `policy` applied, and a member `user` in `groups` with an
 * API key whose access tokens `token()` mints; resolves once the agent holds a bundle.
 */
export async function startPostgresStack(options: {
  pgPort: number;
  database: string;
  resource: string;
  policy: { metadata: { name: string } };
  user: string;
  groups: string[];
  env?: Record<string, string>;
}): Promise<PostgresStack> {
  const cp = await startControlPlane();
  const { id: agentId, token: enrolment } = await createAgent(cp, `${options.resource}-agent-${Date.now()}`);
  const listen = await freePort();
  const yaml = [
    "resources:",
    `  - name: ${options.resource}`,
    "    type: postgres",
    `    listen: 127.0.0.1:${listen}`,
    "    postgres:",
    `      target: { host: 127.0.0.1, port: ${options.pgPort}, user: postgres, database: ${options.database}, sslmode: disable }`,
    "",
  ].join("\n");
  const agent = await startAgent({ token: enrolment, yaml, ...(options.env ? { env: options.env } : {}) });
  const put = await api(cp, "PUT", `/api/v1/policies/${options.policy.metadata.name}`, options.policy);
  if (put.status !== 201) throw new Error(`policy: ${put.status} ${JSON.stringify(put.body)}`);
  const user = await api<{ id: string }>(cp, "POST", "/api/v1/users", {
    email: options.user,
    role: "member",
    groups: options.groups,
  });
  if (user.status !== 201) throw new Error(`user: ${user.status} ${JSON.stringify(user.body)}`);
  const key = await api<{ apiKey: string }>(cp, "POST", `/api/v1/users/${user.body.id}/api-keys`, { name: "e2e" });
  await waitFor(async () => (await getAgent(cp, agentId)).bundleVersion !== "0", 15_000);
  const token = async () => {
    const r = await fetch(`${cp.url}/api/v1/tokens`, {
      method: "POST",
      headers: { authorization: `Bearer ${key.body.apiKey}` },
    });
    return ((await r.json()) as { accessToken: string }).accessToken;
  };
  return { cp, agent, agentId, listen, yaml, token };
}
