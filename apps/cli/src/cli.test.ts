// The CLI in-process against a real control plane (REST on a free port, SQLite in a temp dir):
// every command, its text and --json output, and the exit status of every failure class.
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateSecret, randomId, SecretKind } from "@moat/common";
import { type RunningControlPlane } from "@moat/control-plane/server";
import { freePort, tempDir } from "@moat/testkit";
import { run } from "./cli.js";
import type { Input } from "./io.js";
import { VERSION } from "./version.js";
import { addApiUser, bootstrapKey, fakeTty, startTestControlPlane } from "./test-support/fixtures.js";

let cp: RunningControlPlane;
let adminKey: string;
const keys: Record<string, string> = {};

beforeAll(async () => {
  cp = await startTestControlPlane();
  adminKey = bootstrapKey(cp);
  keys.member = (await addApiUser(cp, "member")).key;
  keys.auditor = (await addApiUser(cp, "auditor")).key;
}, 30_000);

afterAll(async () => {
  await cp?.close();
});

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `moat argv` with its own config file (unless `env.MOAT_CONFIG` is given) and captures output. */
async function moat(
  argv: string[],
  options: { env?: Record<string, string>; stdin?: string | Input } = {},
): Promise<Result> {
  let stdout = "";
  let stderr = "";
  const stdin =
    typeof options.stdin === "object"
      ? options.stdin
      : (Readable.from(options.stdin === undefined ? [] : [options.stdin]) as Input);
  const code = await run(argv, {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
    stdin,
    env: { HOME: tempDir("moat-home-"), ...options.env },
  });
  return { code, stdout, stderr };
}

/** A fresh config file path, logged in as `key` (admin by default). */
async function loggedIn(key = adminKey): Promise<Record<string, string>> {
  const env = { MOAT_CONFIG: join(tempDir("moat-cfg-"), "moat", "config.json") };
  const login = await moat(["login", "--server", cp.httpUrl], { env, stdin: `${key}\n` });
  expect(login.code, login.stderr).toBe(0);
  return env;
}

function parseJson<T = Record<string, unknown>>(text: string): T {
  return JSON.parse(text) as T;
}

describe("basics", () => {
  it("--version prints the version, --help the usage and exit codes", async () => {
    expect(await moat(["--version"])).toMatchObject({ code: 0, stdout: `${VERSION}\n` });
    const help = await moat(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("agents");
    expect(help.stdout).toContain("7 control plane unreachable");
  });

  it("usage errors exit 2, as text or as problem JSON", async () => {
    const unknown = await moat(["agents", "list", "--bogus"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/^moat: unknown option '--bogus' \(usage\)/);

    const json = await moat(["--json", "agents", "nope"]);
    expect(json.code).toBe(2);
    expect(parseJson(json.stderr)).toMatchObject({ code: "usage", type: "urn:moat:cli:usage" });

    expect((await moat(["agents"])).code).toBe(2);
    expect((await moat(["agents", "create"])).code).toBe(2);
    expect((await moat(["resources", "list", "--type", "ftp"])).code).toBe(2);
    expect((await moat(["--timeout", "0", "status"])).code).toBe(2);
  });
});

describe("login and logout", () => {
  it("verifies a key read from stdin, saves it with mode 0600 and never prints it", async () => {
    const dir = tempDir("moat-cfg-");
    const path = join(dir, "nested", "config.json");
    const result = await moat(["login", "--server", `${cp.httpUrl}/`], {
      env: { MOAT_CONFIG: path },
      stdin: `  ${adminKey}  \n`,
    });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain("as admin@moat.local (role admin)");
    expect(result.stdout + result.stderr).not.toContain(adminKey);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(dirname(path)).mode & 0o777).toBe(0o700);
    expect(parseJson(readFileSync(path, "utf8"))).toEqual({ server: cp.httpUrl, apiKey: adminKey });
  });

  it("uses $XDG_CONFIG_HOME/moat/config.json by default", async () => {
    const xdg = tempDir("moat-xdg-");
    const result = await moat(["login", "--server", cp.httpUrl], { env: { XDG_CONFIG_HOME: xdg }, stdin: adminKey });
    expect(result.code, result.stderr).toBe(0);
    expect(parseJson(readFileSync(join(xdg, "moat", "config.json"), "utf8")).apiKey).toBe(adminKey);
  });

  it("falls back to ~/.config/moat/config.json", async () => {
    const home = tempDir("moat-home-");
    const result = await moat(["login", "--server", cp.httpUrl], { env: { HOME: home, MOAT_API_KEY: keys.member! } });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain("(role member)");
    expect(existsSync(join(home, ".config", "moat", "config.json"))).toBe(true);
  });

  it("--json prints the user, not the key; --api-key is accepted", async () => {
    const env = { MOAT_CONFIG: join(tempDir(), "config.json") };
    const result = await moat(["--json", "login", "--server", cp.httpUrl, "--api-key", adminKey], { env });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).not.toContain(adminKey);
    expect(parseJson(result.stdout)).toMatchObject({
      server: cp.httpUrl,
      configPath: env.MOAT_CONFIG,
      user: { role: "admin", email: "admin@moat.local" },
    });
  });

  it("prompts on a terminal without echo", async () => {
    const env = { MOAT_CONFIG: join(tempDir(), "config.json") };
    const tty = fakeTty(`${adminKey}\r`);
    const result = await moat(["login", "--server", cp.httpUrl], { env, stdin: tty });
    expect(result.code, result.stderr).toBe(0);
    expect(tty.rawModes).toEqual([true, false]);
    expect(result.stderr).toContain("API key: ");
    expect(result.stdout + result.stderr).not.toContain(adminKey);
  });

  it("a bad key exits 3 and saves nothing", async () => {
    const env = { MOAT_CONFIG: join(tempDir(), "config.json") };
    const unknown = await moat(["login", "--server", cp.httpUrl], {
      env,
      stdin: generateSecret(SecretKind.apiKey).value,
    });
    expect(unknown.code).toBe(3);
    expect(unknown.stderr).toContain("(unauthenticated)");
    expect(existsSync(env.MOAT_CONFIG)).toBe(false);

    const garbage = await moat(["login", "--server", cp.httpUrl], { env, stdin: "hunter2\n" });
    expect(garbage.code).toBe(3);
    expect(garbage.stderr).toContain("not a Moat API key");
    expect(garbage.stderr).not.toContain("hunter2");
    expect(existsSync(env.MOAT_CONFIG)).toBe(false);
  });

  it("without a server or a key: usage errors", async () => {
    expect((await moat(["login"], { stdin: adminKey })).code).toBe(2);
    expect((await moat(["login", "--server", cp.httpUrl], { stdin: "" })).code).toBe(2);
    expect((await moat(["login", "--server", "ftp://example.com"], { stdin: adminKey })).code).toBe(2);
  });

  it("logout removes the key, keeps the server, and later commands say to log in", async () => {
    const env = await loggedIn();
    const out = await moat(["logout"], { env });
    expect(out.code).toBe(0);
    expect(out.stdout).toContain("Logged out of");
    expect(parseJson(readFileSync(env.MOAT_CONFIG!, "utf8"))).toEqual({ server: cp.httpUrl });
    expect(statSync(env.MOAT_CONFIG!).mode & 0o777).toBe(0o600);

    const status = await moat(["status"], { env });
    expect(status.code).toBe(3);
    expect(status.stderr).toContain(`not logged in to ${cp.httpUrl}: run \`moat login --server ${cp.httpUrl}\``);

    const again = await moat(["--json", "logout"], { env });
    expect(again.code).toBe(0);
    expect(parseJson(again.stdout)).toMatchObject({ loggedOut: false });

    // The server is remembered: login needs only the key now.
    expect((await moat(["login"], { env, stdin: adminKey })).code).toBe(0);
  });

  it("not logged in at all: exit 3 with the login hint", async () => {
    const result = await moat(["agents", "list"]);
    expect(result.code).toBe(3);
    expect(result.stderr).toContain("moat: not logged in: run `moat login --server URL` (not_logged_in)");
  });

  it("a corrupt config file is reported (exit 1) and repaired by login", async () => {
    const path = join(tempDir(), "config.json");
    writeFileSync(path, "{not json", { mode: 0o600 });
    const status = await moat(["status"], { env: { MOAT_CONFIG: path } });
    expect(status.code).toBe(1);
    expect(status.stderr).toContain("(config_invalid)");
    const login = await moat(["login", "--server", cp.httpUrl], { env: { MOAT_CONFIG: path }, stdin: adminKey });
    expect(login.code).toBe(0);
    expect(parseJson(readFileSync(path, "utf8")).apiKey).toBe(adminKey);
  });
});

describe("server and key resolution", () => {
  it("MOAT_SERVER and MOAT_API_KEY work without a config file", async () => {
    const result = await moat(["status"], { env: { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: adminKey } });
    expect(result.code, result.stderr).toBe(0);
  });

  it("the stored key is not sent to another --server", async () => {
    const env = await loggedIn();
    const other = `http://127.0.0.1:${await freePort()}`;
    const result = await moat(["--server", other, "agents", "list"], { env });
    expect(result.code).toBe(3);
    expect(result.stderr).toContain(`the stored API key belongs to ${cp.httpUrl}`);
  });

  it("warns when the config file holding the key is readable by others", async () => {
    const env = await loggedIn();
    const { chmodSync } = await import("node:fs");
    chmodSync(env.MOAT_CONFIG!, 0o644);
    const result = await moat(["status"], { env });
    expect(result.code).toBe(0);
    expect(result.stderr).toContain("other users can read it");
  });
});

describe("status", () => {
  it("shows reachability, version, store, counts and the caller's role", async () => {
    const env = await loggedIn();
    const result = await moat(["status"], { env });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/Server: +http:\/\/127\.0\.0\.1:\d+ \(reachable, ready\)/);
    expect(result.stdout).toMatch(/Version: +\d+\.\d+\.\d+/);
    expect(result.stdout).toMatch(/Store: +sqlite/);
    expect(result.stdout).toMatch(/Agents: +\d+ total, \d+ connected, \d+ pending/);
    expect(result.stdout).toMatch(/Resources: +\d+/);
    expect(result.stdout).toContain("admin@moat.local (role admin)");

    const json = await moat(["status", "--json"], { env });
    expect(json.code).toBe(0);
    expect(parseJson(json.stdout)).toMatchObject({
      server: cp.httpUrl,
      reachable: true,
      readiness: { status: "ready" },
      status: { store: "sqlite", agents: { total: expect.any(Number) } },
      whoami: { role: "admin" },
    });
  });

  it("works for every role", async () => {
    const env = await loggedIn(keys.member);
    const result = await moat(["status"], { env });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain("(role member)");
  });

  it("an unreachable control plane exits 7", async () => {
    const server = `http://127.0.0.1:${await freePort()}`;
    const result = await moat(["status"], { env: { MOAT_SERVER: server, MOAT_API_KEY: adminKey } });
    expect(result.code).toBe(7);
    expect(result.stderr).toContain(`moat: cannot reach the control plane at ${server}: connection refused`);
    expect(result.stderr).not.toContain(adminKey);

    const json = await moat(["--json", "agents", "list"], { env: { MOAT_SERVER: server, MOAT_API_KEY: adminKey } });
    expect(json.code).toBe(7);
    expect(parseJson(json.stderr)).toMatchObject({ code: "unreachable" });

    const login = await moat(["login", "--server", server], { stdin: adminKey });
    expect(login.code).toBe(7);
  });
});

describe("agents", () => {
  it("create prints the token once with the next steps; --json is the API's answer", async () => {
    const env = await loggedIn();
    const name = `edge-${randomId(6)}`;
    const result = await moat(["agents", "create", name, "--description", "rack 4"], { env });
    expect(result.code, result.stderr).toBe(0);
    const token = /moat_et1_[A-Za-z0-9_-]+/.exec(result.stdout)?.[0];
    expect(token).toBeDefined();
    expect(result.stdout).toContain(`Created agent ${name}`);
    expect(result.stdout).toContain(`MOAT_AGENT_ENROLMENT_TOKEN=${token} moat-agent --config agent.yaml`);
    expect(result.stdout).toContain("dataDir:");
    expect(result.stdout).toContain("#   - name:");

    const json = await moat(["--json", "agents", "create", `${name}-2`], { env });
    expect(json.code).toBe(0);
    expect(parseJson(json.stdout)).toMatchObject({
      agent: { name: `${name}-2`, state: "pending", connected: false },
      enrolmentToken: expect.stringMatching(/^moat_et1_/),
      expiresAt: expect.any(String),
    });
  });

  it("list, get, token and delete, by name and by id", async () => {
    const env = await loggedIn();
    const a = `list-a-${randomId(4)}`;
    const b = `list-b-${randomId(4)}`;
    expect((await moat(["agents", "create", a, "--description", "first"], { env })).code).toBe(0);
    const bId = parseJson<{ agent: { id: string } }>((await moat(["--json", "agents", "create", b], { env })).stdout)
      .agent.id;

    const list = await moat(["agents", "list"], { env });
    expect(list.code).toBe(0);
    const lines = list.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^NAME +ID +STATE +VERSION +HOSTNAME +LAST SEEN +BUNDLE$/);
    const rowA = lines.find((l) => l.startsWith(`${a} `));
    expect(rowA).toMatch(new RegExp(`^${a} +[a-z0-9]+ +pending +- +- +- +0$`));
    // Columns line up: every row's STATE starts where the header's does.
    const stateColumn = lines[0]!.indexOf("STATE");
    expect(rowA!.indexOf("pending")).toBe(stateColumn);

    const jsonList = parseJson<{ items: { id: string; name: string }[] }>(
      (await moat(["agents", "ls", "--json"], { env })).stdout,
    );
    expect(jsonList.items.map((i) => i.name)).toEqual(expect.arrayContaining([a, b]));

    const byName = await moat(["agents", "get", a], { env });
    expect(byName.code).toBe(0);
    expect(byName.stdout).toMatch(new RegExp(`Name: +${a}`));
    expect(byName.stdout).toMatch(/Description: +first/);
    expect(byName.stdout).toMatch(/Created: +\d{4}-\d\d-\d\dT.*\((just now|\d+s ago)\)/);
    const byId = await moat(["--json", "agents", "get", bId], { env });
    expect(parseJson(byId.stdout)).toMatchObject({ id: bId, name: b });

    const token = await moat(["agents", "token", a], { env });
    expect(token.code).toBe(0);
    expect(token.stdout).toMatch(/moat_et1_/);
    expect(token.stdout).toContain("MOAT_AGENT_ENROLMENT_TOKEN=");
    const tokenJson = await moat(["agents", "token", bId, "--json"], { env });
    expect(parseJson(tokenJson.stdout)).toMatchObject({
      agent: { id: bId },
      enrolmentToken: expect.stringMatching(/^moat_et1_/),
    });

    const delByName = await moat(["agents", "delete", a, "--yes"], { env });
    expect(delByName.code).toBe(0);
    expect(delByName.stdout).toContain(`Deleted agent ${a}`);
    const delById = await moat(["--json", "agents", "rm", bId, "-y"], { env });
    expect(delById.code).toBe(0);
    expect(parseJson(delById.stdout)).toMatchObject({ deleted: true, agent: { id: bId, name: b } });

    const after = parseJson<{ items: { name: string }[] }>((await moat(["--json", "agents", "list"], { env })).stdout);
    expect(after.items.map((i) => i.name)).not.toContain(a);
    expect(after.items.map((i) => i.name)).not.toContain(b);
    expect((await moat(["agents", "get", a], { env })).code).toBe(5);
  });

  it("delete without --yes: refused when stdin is not a terminal, asks y/N on a terminal", async () => {
    const env = await loggedIn();
    const name = `keep-${randomId(4)}`;
    expect((await moat(["agents", "create", name], { env })).code).toBe(0);

    const refused = await moat(["agents", "delete", name], { env });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain(`refusing to delete agent "${name}" without confirmation (confirmation_required)`);
    expect(refused.stderr).toContain("--yes");
    expect((await moat(["agents", "get", name], { env })).code).toBe(0);

    const declined = await moat(["agents", "delete", name], { env, stdin: fakeTty("n\n") });
    expect(declined.code).toBe(1);
    expect(declined.stderr).toContain("[y/N]");
    expect((await moat(["agents", "get", name], { env })).code).toBe(0);

    const accepted = await moat(["agents", "delete", name], { env, stdin: fakeTty("y\n") });
    expect(accepted.code, accepted.stderr).toBe(0);
    expect((await moat(["agents", "get", name], { env })).code).toBe(5);
  });

  it("an unknown agent exits 5", async () => {
    const env = await loggedIn();
    for (const argv of [
      ["agents", "get", "nope"],
      ["agents", "token", "nope"],
      ["agents", "delete", "nope", "--yes"],
    ]) {
      const result = await moat(argv, { env });
      expect(result.code).toBe(5);
      expect(result.stderr).toContain('moat: no agent named or with id "nope" (not_found)');
    }
    const json = await moat(["--json", "agents", "get", "nope"], { env });
    expect(parseJson(json.stderr)).toMatchObject({ code: "not_found" });
  });

  it("a duplicate name exits 6", async () => {
    const env = await loggedIn();
    const name = `dup-${randomId(4)}`;
    expect((await moat(["agents", "create", name], { env })).code).toBe(0);
    const dup = await moat(["agents", "create", name], { env });
    expect(dup.code).toBe(6);
    expect(dup.stderr).toMatch(/^moat: .+ \(conflict\)$/m);
  });

  it("an invalid name exits 2 and shows the field errors", async () => {
    const env = await loggedIn();
    const result = await moat(["agents", "create", "Bad_Name"], { env });
    expect(result.code).toBe(2);
    expect(result.stderr).toContain("(validation_failed)");
    expect(result.stderr).toMatch(/^ {2}body\/name: must match pattern/m);

    const json = await moat(["agents", "create", "Bad_Name", "--json"], { env });
    expect(json.code).toBe(2);
    const problem = parseJson<{ status: number; code: string; errors: { field: string }[] }>(json.stderr);
    expect(problem).toMatchObject({ status: 400, code: "validation_failed" });
    expect(problem.errors.map((e) => e.field)).toContain("body/name");
  });

  it("a role without the permission exits 4", async () => {
    const member = await loggedIn(keys.member);
    const list = await moat(["agents", "list"], { env: member });
    expect(list.code).toBe(4);
    expect(list.stderr).toContain("(permission_denied)");
    expect((await moat(["agents", "create", "nope"], { env: member })).code).toBe(4);

    const auditor = await loggedIn(keys.auditor);
    expect((await moat(["agents", "list"], { env: auditor })).code).toBe(0);
    const create = await moat(["--json", "agents", "create", `aud-${randomId(4)}`], { env: auditor });
    expect(create.code).toBe(4);
    expect(parseJson(create.stderr)).toMatchObject({ status: 403, code: "permission_denied" });
  });
});

describe("resources", () => {
  it("an empty list, as text and as JSON", async () => {
    const env = await loggedIn();
    const text = await moat(["resources", "list", "--type", "ssh"], { env });
    expect(text.code).toBe(0);
    expect(text.stdout).toContain("No resources");
    const json = await moat(["--json", "resources", "list", "--type", "ssh"], { env });
    expect(parseJson(json.stdout)).toEqual({ items: [] });
  });

  it("lists announced resources, filtered by type and by agent name or id", async () => {
    const env = await loggedIn();
    const name = `res-${randomId(4)}`;
    const agent = parseJson<{ agent: { id: string } }>(
      (await moat(["--json", "agents", "create", name], { env })).stdout,
    ).agent;
    await cp.store.resources.replaceForAgent(
      agent.id,
      [
        {
          name: `${name}-db`,
          type: "postgres",
          labels: { env: "prod" },
          listenAddress: "0.0.0.0:15432",
          description: "",
        },
        { name: `${name}-ssh`, type: "ssh", labels: {}, listenAddress: "0.0.0.0:2222", description: "" },
      ],
      () => randomId(),
    );

    const all = await moat(["resources", "list", "--agent", name], { env });
    expect(all.code, all.stderr).toBe(0);
    expect(all.stdout.split("\n")[0]).toMatch(/^NAME +TYPE +AGENT +LISTEN +LABELS +UPDATED$/);
    expect(all.stdout).toMatch(new RegExp(`${name}-db +postgres +${name} +0\\.0\\.0\\.0:15432 +env=prod +`));

    const byType = parseJson<{ items: { name: string; agentId: string; agentName: string }[] }>(
      (await moat(["--json", "resources", "list", "--agent", agent.id, "--type", "postgres"], { env })).stdout,
    );
    expect(byType.items).toEqual([
      expect.objectContaining({ name: `${name}-db`, agentId: agent.id, agentName: name, type: "postgres" }),
    ]);

    // A member may list resources but not agents: the agent name is matched on the resources.
    const member = await loggedIn(keys.member);
    const asMember = parseJson<{ items: { name: string }[] }>(
      (await moat(["--json", "resources", "list", "--agent", name], { env: member })).stdout,
    );
    expect(asMember.items.map((r) => r.name).sort()).toEqual([`${name}-db`, `${name}-ssh`]);

    expect((await moat(["resources", "list", "--agent", "no-such-agent"], { env })).code).toBe(5);
  });
});

describe("output safety", () => {
  it("strips terminal control characters from server-provided values", async () => {
    const env = await loggedIn();
    const name = `esc-${randomId(4)}`;
    const result = await moat(["agents", "create", name, "--description", "evil\u001b[2Jtext"], { env });
    expect(result.code).toBe(0);
    const get = await moat(["agents", "get", name], { env });
    expect(get.stdout).not.toContain("\u001b");
    expect(get.stdout).toContain("evil?[2Jtext");
  });

  it("creates a missing config directory with mode 0700", async () => {
    const dir = join(tempDir(), "a", "b");
    mkdirSync(dirname(dir), { recursive: true });
    const env = { MOAT_CONFIG: join(dir, "config.json") };
    expect((await moat(["login", "--server", cp.httpUrl], { env, stdin: adminKey })).code).toBe(0);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
  });
});
