// `moat audit` in-process against a real control plane (REST on a free port, SQLite in a temp
// dir): events fed through its ingestion as an agent would ship them; search, tail (and -f until
// interrupted), sessions, one session, and export, with their exit statuses.
import { EventEmitter } from "node:events";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningControlPlane } from "@moat/control-plane/server";
import { tempDir } from "@moat/testkit";
import { run } from "./cli.js";
import type { CliIo, Input, Writer } from "./io.js";
import { encodeChain, testUlid, type TestEvent } from "./test-support/audit-events.js";
import { addApiUser, bootstrapKey, startTestControlPlane } from "./test-support/fixtures.js";

let cp: RunningControlPlane;
let admin: Record<string, string>;
let auditor: Record<string, string>;
let member: Record<string, string>;
let agentId: string;
let seq = 0;
let prev: Uint8Array = new Uint8Array(0);
const sessions: string[] = [];
const base = Date.UTC(2030, 5, 1, 12, 0, 0);

/** Ships `events` as the next part of the test agent's chain. */
async function ship(events: TestEvent[]): Promise<void> {
  const { batch, last } = encodeChain(events, seq + 1, prev);
  for (let i = 0; i < batch.length; i += 500) await cp.audit.ingest(agentId, batch.slice(i, i + 500));
  seq += events.length;
  prev = last;
}

/** A session of `statements` statements (every third one denied), one event a second from `at`. */
function session(at: number, user: string, statements: number): TestEvent[] {
  const sessionId = testUlid();
  sessions.push(sessionId);
  const common = { user, resource: "orders-db", sessionId };
  const events: TestEvent[] = [{ ...common, type: "session.start", time: new Date(at), verdict: "allow" }];
  for (let i = 1; i <= statements; i++)
    events.push({
      ...common,
      type: "db.query",
      time: new Date(at + i * 1000),
      verdict: i % 3 === 0 ? "deny" : "allow",
      text: `SELECT * FROM orders\n  WHERE id = ${i}`,
    });
  events.push({ ...common, type: "session.end", time: new Date(at + (statements + 1) * 1000), message: "bye" });
  return events;
}

beforeAll(async () => {
  cp = await startTestControlPlane();
  admin = { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: bootstrapKey(cp) };
  auditor = { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: (await addApiUser(cp, "auditor")).key };
  member = { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: (await addApiUser(cp, "member")).key };
  agentId = (await cp.agents.create({ name: "edge-audit", description: "" })).agent.id;
  await ship(session(base, "alice@example.com", 6)); // seq 1-8
  await ship(session(base + 60_000, "bob@example.com", 3)); // seq 9-13
}, 30_000);

afterAll(async () => {
  await cp?.close();
});

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

async function moat(argv: string[], env: Record<string, string>, io: Partial<CliIo> = {}): Promise<Result> {
  let stdout = "";
  let stderr = "";
  const code = await run(argv, {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
    stdin: Readable.from([]) as Input,
    env: { HOME: tempDir("moat-home-"), ...env },
    ...io,
  });
  return { code, stdout, stderr };
}

const jsonOf = <T>(r: Result) => JSON.parse(r.stdout) as T;

describe("moat audit search", () => {
  it("prints matching events newest first in a table, the agent by name", async () => {
    const r = await moat(["audit", "search", "--agent", "edge-audit"], auditor);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^TIME\s+AGENT\s+TYPE\s+USER\s+RESOURCE\s+VERDICT\s+TEXT$/);
    expect(lines).toHaveLength(1 + 13);
    expect(lines[1]).toMatch(
      /^2030-06-01T12:01:04Z\s+edge-audit\s+session\.end\s+bob@example\.com\s+orders-db\s+-\s+bye$/,
    );
    // Statements print on one line.
    expect(lines[2]).toContain("SELECT * FROM orders WHERE id = 3");
  });

  it("filters by verdict, text, user, time and agent, and stops at --limit", async () => {
    const denied = jsonOf<{ items: { seq: string; verdict: string }[] }>(
      await moat(["--json", "audit", "search", "--agent", agentId, "--verdict", "deny", "-q", "id = 3"], auditor),
    );
    expect(denied.items.map((e) => [e.seq, e.verdict])).toEqual([
      ["12", "deny"],
      ["4", "deny"],
    ]);
    const bob = jsonOf<{ items: unknown[] }>(
      await moat(["--json", "audit", "search", "--user", "bob@example.com", "--since", "2030-06-01T12:01:00Z"], admin),
    );
    expect(bob.items).toHaveLength(5);
    const limited = jsonOf<{ items: unknown[]; nextCursor?: string }>(
      await moat(["--json", "audit", "search", "--agent", agentId, "--limit", "4"], auditor),
    );
    expect(limited.items).toHaveLength(4);
    expect(limited.nextCursor).toBeDefined();
    // The control plane's own chain is the pseudo-agent control-plane.
    expect((await moat(["agents", "create", "edge-other"], admin)).code).toBe(0);
    const own = await moat(["audit", "search", "--agent", "control-plane", "--type", "agent.created"], auditor);
    expect(own.stdout).toContain("agent.created");
  });

  it("follows the cursor past the API's page size of 1000", async () => {
    const bulk = (await cp.agents.create({ name: "edge-bulk", description: "" })).agent.id;
    const events: TestEvent[] = Array.from({ length: 1100 }, (_, i) => ({
      type: "db.query",
      time: new Date(base - 3_600_000 + i * 10),
      user: "bulk@example.com",
      text: `select ${i}`,
    }));
    const { batch } = encodeChain(events);
    for (let i = 0; i < batch.length; i += 500) await cp.audit.ingest(bulk, batch.slice(i, i + 500));
    const r = await moat(["--json", "audit", "search", "--agent", "edge-bulk", "--limit", "1050"], auditor);
    const page = jsonOf<{ items: { seq: string }[]; nextCursor?: string }>(r);
    expect(page.items).toHaveLength(1050);
    expect(page.items.map((e) => Number(e.seq))).toEqual(Array.from({ length: 1050 }, (_, i) => 1100 - i));
    expect(page.nextCursor).toBeDefined();
  });

  it("refuses bad times and unknown agents, and members", async () => {
    const bad = await moat(["audit", "search", "--since", "yesterday"], auditor);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("is not a time");
    expect((await moat(["audit", "search", "--agent", "nope"], auditor)).code).toBe(5);
    const refused = await moat(["audit", "search"], member);
    expect(refused.code).toBe(4);
    expect(refused.stderr).toContain("permission_denied");
  });
});

describe("moat audit sessions / session", () => {
  it("lists sessions with their counts, and shows one session's events in order", async () => {
    const list = await moat(["audit", "sessions", "--agent", "edge-audit"], auditor);
    expect(list.code, list.stderr).toBe(0);
    const lines = list.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^SESSION\s+AGENT\s+USER\s+RESOURCE\s+STARTED\s+DURATION\s+STATEMENTS\s+DENIED$/);
    expect(lines[1]).toMatch(
      new RegExp(`^${sessions[1]}\\s+edge-audit\\s+bob@example.com\\s+orders-db\\s+\\S+\\s+4s\\s+3\\s+1$`),
    );
    expect(lines[2]).toMatch(
      new RegExp(`^${sessions[0]}\\s+edge-audit\\s+alice@example.com\\s+orders-db\\s+\\S+\\s+7s\\s+6\\s+2$`),
    );

    const json = jsonOf<{ items: { sessionId: string; eventCount: number }[] }>(
      await moat(["--json", "audit", "sessions", "--user", "alice@example.com"], auditor),
    );
    expect(json.items).toEqual([expect.objectContaining({ sessionId: sessions[0], eventCount: 8 })]);

    const one = await moat(["audit", "session", sessions[0] as string, "--limit", "5"], auditor);
    expect(one.code, one.stderr).toBe(0);
    expect(one.stdout).toContain(`Session:   ${sessions[0]}`);
    expect(one.stdout).toMatch(/Events:\s+8 \(6 statements, 2 denied\)/);
    const rows = one.stdout.split("\n").filter((l) => /^\d+\s/.test(l));
    expect(rows.map((l) => l.split(/\s+/)[0])).toEqual(["1", "2", "3", "4", "5"]);
    expect(one.stderr).toContain("raise --limit");
    expect((await moat(["audit", "session", "01JDNOSUCHSESSION000000000"], auditor)).code).toBe(5);
  });
});

describe("moat audit export", () => {
  it("writes every matching event as JSON Lines on stdout, and the count on stderr", async () => {
    const r = await moat(["audit", "export", "--agent", "edge-audit"], auditor);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout
      .trimEnd()
      .split("\n")
      .map((l) => JSON.parse(l) as { seq: string });
    expect(lines.map((e) => Number(e.seq))).toEqual(Array.from({ length: 13 }, (_, i) => i + 1));
    expect(r.stderr).toBe("Exported 13 audit events.\n");
    expect((await moat(["audit", "export"], member)).code).toBe(4);
  });

  it("waits for a slow stdout to drain instead of buffering the export", async () => {
    // A pipe that is always full: every write answers false and 'drain' follows a moment later.
    const pipe = new EventEmitter() as EventEmitter & Writer;
    let text = "";
    let drains = 0;
    pipe.write = (chunk: string) => {
      text += chunk;
      setTimeout(() => {
        drains++;
        pipe.emit("drain");
      }, 5);
      return false;
    };
    const r = await moat(["audit", "export", "--agent", agentId], auditor, { stdout: pipe });
    expect(r.code, r.stderr).toBe(0);
    expect(text.trimEnd().split("\n")).toHaveLength(13);
    expect(drains).toBeGreaterThanOrEqual(1);
  });
});

describe("moat audit tail", () => {
  it("prints the latest events oldest first", async () => {
    const r = await moat(["audit", "tail", "--agent", "edge-audit", "-n", "3"], auditor);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/^2030-06-01T12:01:02Z\s+edge-audit\s+db\.query\s+bob@example\.com/);
    expect(lines[2]).toMatch(/session\.end/);
  });

  it("with -f follows new events until interrupted, and exits 0", async () => {
    let interrupt: (() => void) | undefined;
    let stdout = "";
    const out = { write: (s: string) => (stdout += s) };
    const running = moat(
      ["--json", "audit", "tail", "-f", "--agent", agentId, "-n", "2", "--interval", "0.1"],
      auditor,
      {
        stdout: out,
        onInterrupt: (handler) => {
          interrupt = handler;
          return () => (interrupt = undefined);
        },
      },
    );
    const lines = () =>
      stdout
        .trimEnd()
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { seq: string; type: string });
    const until = async (check: () => boolean) => {
      for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 25));
      expect(check()).toBe(true);
    };
    await until(() => lines().length === 2 && interrupt !== undefined);
    await ship(session(base + 120_000, "carol@example.com", 2)); // seq 14-17
    await until(() => lines().length === 6);
    await ship([{ type: "db.query", time: new Date(base + 180_000), user: "carol@example.com", text: "select 1" }]);
    await until(() => lines().length === 7);
    // Stored now with an older time (an agent's spool draining after an outage): still shown.
    await ship([{ type: "db.query", time: new Date(base - 3_600_000), user: "dave@example.com", text: "select 2" }]);
    await until(() => lines().length === 8);
    expect(lines().map((e) => Number(e.seq))).toEqual([12, 13, 14, 15, 16, 17, 18, 19]);
    interrupt?.();
    const r = await running;
    expect(r.code, r.stderr).toBe(0);
    expect(interrupt).toBeUndefined(); // the handler was released
  });

  it("with -f and a filter shows only matching events, in the order they are stored", async () => {
    let interrupt: (() => void) | undefined;
    let stdout = "";
    const running = moat(
      [
        "--json",
        "audit",
        "tail",
        "-f",
        "--agent",
        agentId,
        "--user",
        "erin@example.com",
        "-n",
        "0",
        "--interval",
        "0.1",
      ],
      auditor,
      {
        stdout: { write: (s: string) => (stdout += s) },
        onInterrupt: (handler) => {
          interrupt = handler;
          return () => (interrupt = undefined);
        },
      },
    );
    for (let i = 0; i < 200 && interrupt === undefined; i++) await new Promise((r) => setTimeout(r, 25));
    await new Promise((r) => setTimeout(r, 300)); // the follow cursor is taken
    const before = seq;
    await ship([
      { type: "db.query", time: new Date(base + 200_000), user: "frank@example.com", text: "select 3" },
      { type: "db.query", time: new Date(base + 10_000), user: "erin@example.com", text: "select 4" },
    ]);
    const lines = () =>
      stdout
        .trimEnd()
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { seq: string; user: string });
    for (let i = 0; i < 200 && lines().length < 1; i++) await new Promise((r) => setTimeout(r, 25));
    await new Promise((r) => setTimeout(r, 300));
    expect(lines()).toMatchObject([{ seq: String(before + 2), user: "erin@example.com" }]);
    interrupt?.();
    expect((await running).code).toBe(0);
  });
});
