import { describe, expect, it } from "vitest";
import type { AccessToken, Resource, Whoami } from "./api-client.js";
import { createConnectCommand, parseListenAddress, tokenSubject } from "./commands/connect.js";
import { CliError } from "./errors.js";
import { createOutput } from "./output.js";

const jwt = (claims: object) => `e30.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.c2ln`;

function resource(extra: Partial<Resource> = {}): Resource {
  return {
    id: "res_1",
    name: "prod-db",
    type: "postgres",
    labels: {},
    listenAddress: "10.0.0.7:6432",
    description: "",
    agentId: "agt_1",
    agentName: "edge",
    updatedAt: new Date(0).toISOString(),
    ...extra,
  };
}

function setup(resources: Resource[], json = false) {
  let stdout = "";
  const runs: { command: string; args: readonly string[]; env: Record<string, string | undefined> }[] = [];
  let issued = 0;
  const token = jwt({ sub: "alice@example.com" });
  const command = createConnectCommand({
    client: {
      listResources: async () => resources,
      issueToken: async (): Promise<AccessToken> => {
        issued++;
        return { accessToken: token, tokenType: "Bearer", tokenId: "tok_1", expiresAt: "2026-11-25T20:00:00Z" };
      },
      whoami: async () => ({ email: "alice@example.com" }) as Whoami,
    },
    out: createOutput({ stdout: { write: (c: string) => (stdout += c) }, stderr: { write: () => true }, json }),
    io: {
      env: { PATH: "/usr/bin", PGPASSWORD: "stale" },
      exec: async (cmd, args, env) => {
        runs.push({ command: cmd, args, env });
        return 3;
      },
    },
  });
  return { command, runs, stdout: () => stdout, issued: () => issued, token };
}

describe("moat connect", () => {
  it("parses agent listen addresses and token subjects", () => {
    expect(parseListenAddress("127.0.0.1:6432")).toEqual({ host: "127.0.0.1", port: 6432 });
    expect(parseListenAddress("[::1]:5432")).toEqual({ host: "::1", port: 5432 });
    expect(parseListenAddress(":5432")).toEqual({ host: "", port: 5432 });
    expect(parseListenAddress("db.internal:70000")).toBeUndefined();
    expect(parseListenAddress("nonsense")).toBeUndefined();
    expect(tokenSubject(jwt({ sub: "a@b.c" }))).toBe("a@b.c");
    expect(tokenSubject("not-a-token")).toBeUndefined();
    expect(tokenSubject(jwt({ sub: 5 }))).toBeUndefined();
  });

  it("runs psql with the token in PGPASSWORD only, passes arguments through and returns psql's status", async () => {
    const t = setup([resource()]);
    const code = await t.command.connect("prod-db", { db: "app" }, ["-c", "SELECT 1"]);
    expect(code).toBe(3);
    expect(t.runs).toHaveLength(1);
    const run = t.runs[0]!;
    expect(run.command).toBe("psql");
    expect(run.args).toEqual(["-c", "SELECT 1"]);
    expect(run.args.join(" ")).not.toContain(t.token);
    expect(run.env).toMatchObject({
      PGHOST: "10.0.0.7",
      PGPORT: "6432",
      PGUSER: "alice@example.com",
      PGDATABASE: "app",
      PGSSLMODE: "require",
      PGPASSWORD: t.token,
      PATH: "/usr/bin",
    });
    expect(t.stdout()).toBe("");
  });

  it("--print shows where to connect without minting or printing a token; --env prints exports", async () => {
    const t = setup([resource({ listenAddress: "[::1]:6432" })]);
    expect(await t.command.connect("prod-db", { print: true, db: "my app" }, [])).toBe(0);
    expect(t.stdout()).toContain("postgresql://alice%40example.com@[::1]:6432/my%20app?sslmode=require");
    expect(t.issued()).toBe(0);
    const e = setup([resource()]);
    expect(await e.command.connect("prod-db", { env: true }, [])).toBe(0);
    expect(e.stdout()).toContain(`export PGPASSWORD='${e.token}'`);
    expect(e.stdout()).toContain("export PGDATABASE='postgres'");
    expect(e.runs).toHaveLength(0);
  });

  it("needs a host for agents listening on every address, and says which resources exist", async () => {
    const t = setup([resource({ listenAddress: "0.0.0.0:6432" }), resource({ name: "ssh-box", type: "ssh" })]);
    await expect(t.command.connect("prod-db", {}, [])).rejects.toThrow(/says no host to dial/);
    expect(await t.command.connect("prod-db", { host: "agent.example.net" }, [])).toBe(3);
    expect(t.runs[0]?.env.PGHOST).toBe("agent.example.net");
    await expect(t.command.connect("nope", {}, [])).rejects.toThrow(CliError);
    await expect(t.command.connect("nope", {}, [])).rejects.toMatchObject({ hint: "resources: prod-db, ssh-box" });
    await expect(t.command.connect("ssh-box", {}, [])).rejects.toThrow(/supports postgres resources/);
    await expect(t.command.connect("prod-db", { host: "h", sslmode: "sometimes" }, [])).rejects.toThrow(/--sslmode/);
    await expect(t.command.connect("prod-db", { host: "h", port: "0" }, [])).rejects.toThrow(/--port/);
  });
});
