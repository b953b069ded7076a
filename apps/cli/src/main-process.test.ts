// `moat` as users run it: the built dist/main.js spawned as a child process against a real control
// plane. Checks what in-process tests cannot: the shebang entry, real stdin/stdout, exit statuses
// and that the process ends by itself (nothing left holding the event loop).
import { execFileSync, spawn } from "node:child_process";
import { readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningControlPlane } from "@moat/control-plane/server";
import { freePort, tempDir } from "@moat/testkit";
import { bootstrapKey, startTestControlPlane } from "./test-support/fixtures.js";

const appDir = join(dirname(fileURLToPath(import.meta.url)), "..");
const mainJs = join(appDir, "dist", "main.js");

let cp: RunningControlPlane;
let adminKey: string;
let configFile: string;

beforeAll(async () => {
  // Always rebuild, as `pnpm build` does: a stale dist/ would test yesterday's CLI.
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  execFileSync(process.execPath, [tsc, "-p", join(appDir, "tsconfig.build.json")], { cwd: appDir, stdio: "pipe" });
  cp = await startTestControlPlane();
  adminKey = bootstrapKey(cp);
  configFile = join(tempDir("moat-cli-proc-"), "config.json");
});

afterAll(async () => {
  await cp?.close();
});

function moat(args: string[], options: { stdin?: string; env?: Record<string, string> } = {}) {
  // A clean environment: the developer's own MOAT_* variables must not leak into the test.
  const env = { PATH: process.env.PATH ?? "", HOME: tempDir("moat-home-"), MOAT_CONFIG: configFile, ...options.env };
  const child = spawn(process.execPath, [mainJs, ...args], { env, stdio: ["pipe", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
  child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
  if (options.stdin !== undefined) child.stdin.end(options.stdin);
  // stdin stays open when nothing is given, like a terminal nobody types into: the CLI must not wait on it.
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`moat ${args.join(" ")} did not exit: ${stdout}${stderr}`));
    }, 20_000);
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe("the built moat binary", () => {
  it("has a node shebang", () => {
    expect(readFileSync(mainJs, "utf8").startsWith("#!/usr/bin/env node\n")).toBe(true);
  });

  it("prints its version", async () => {
    const result = await moat(["--version"]);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^\d+\.\d+\.\d+/);
  });

  it("logs in from stdin, then creates, lists and deletes an agent", async () => {
    const login = await moat(["login", "--server", cp.httpUrl], { stdin: `${adminKey}\n` });
    expect(login.code, login.stderr).toBe(0);
    expect(login.stdout + login.stderr).not.toContain(adminKey);
    expect(statSync(configFile).mode & 0o777).toBe(0o600);

    const create = await moat(["agents", "create", "proc-edge"]);
    expect(create.code, create.stderr).toBe(0);
    expect(create.stdout).toMatch(/MOAT_AGENT_ENROLMENT_TOKEN=moat_et1_\S+ moat-agent --config agent\.yaml/);

    const list = await moat(["agents", "list", "--json"]);
    expect(list.code).toBe(0);
    const items = (JSON.parse(list.stdout) as { items: { name: string }[] }).items;
    expect(items.map((i) => i.name)).toContain("proc-edge");

    const refused = await moat(["agents", "delete", "proc-edge"], { stdin: "" });
    expect(refused.code).toBe(2);

    const deleted = await moat(["agents", "delete", "proc-edge", "--yes"]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect((await moat(["agents", "get", "proc-edge"])).code).toBe(5);
  });

  it("exits 7 when nothing listens, and 3 with a rejected key", async () => {
    const server = `http://127.0.0.1:${await freePort()}`;
    const down = await moat(["status"], { env: { MOAT_SERVER: server, MOAT_API_KEY: adminKey } });
    expect(down.code).toBe(7);
    expect(down.stderr).toContain(`cannot reach the control plane at ${server}`);

    const rejected = await moat(["--json", "status"], {
      env: { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: `${adminKey.slice(0, -4)}AAAA` },
    });
    expect(rejected.code).toBe(3);
    expect(JSON.parse(rejected.stderr)).toMatchObject({ code: "unauthenticated", status: 401 });
  });

  it("stops `audit tail -f` on Ctrl-C (SIGINT) with status 0", async () => {
    const env = { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: adminKey };
    expect((await moat(["agents", "create", "tail-edge"], { env })).code).toBe(0); // an agent.created event
    const child = spawn(
      process.execPath,
      [mainJs, "audit", "tail", "-f", "--agent", "control-plane", "-n", "1", "--interval", "0.2"],
      { env: { PATH: process.env.PATH ?? "", HOME: tempDir("moat-home-"), ...env }, stdio: ["pipe", "pipe", "pipe"] },
    );
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    for (let i = 0; i < 200 && !stdout.includes("agent.created"); i++) await new Promise((r) => setTimeout(r, 50));
    expect(stdout, stderr).toContain("agent.created");
    await new Promise((r) => setTimeout(r, 500)); // a few polls
    child.kill("SIGINT");
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    expect(await exited).toBe(0);
    clearTimeout(timer);
    expect(stderr).toBe("");
  });
});
