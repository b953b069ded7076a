// The audit trail's store paths on both providers: batched idempotent ingestion (resends and
// concurrent duplicates), session summaries, retention pruning with its horizon, the pruning lock,
// and the 0006 migration's backfill of summaries for events stored before it.
import { createHash, randomBytes } from "node:crypto";
import { copyFileSync, mkdirSync, readdirSync, rmSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger, randomId } from "@moat/common";
import { startPostgres, tempDir, type TestPostgres } from "@moat/testkit";
import { createAuditRetention } from "../services/audit-retention.js";
import { createAuditService } from "../services/audit.js";
import { openStore, type IngestRow, type Store } from "./index.js";
import { migratePostgres, migrateSqlite } from "./migrate.js";
import { startWalCheckpointer } from "./wal-checkpointer.js";

let postgres: TestPostgres;
const dirs: string[] = [];
const migrations = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "prisma", "migrations");

beforeAll(async () => {
  postgres = await startPostgres();
}, 60_000);

afterAll(async () => {
  await postgres?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const providers: [string, () => Promise<string>][] = [
  [
    "sqlite",
    async () => {
      const dir = tempDir();
      dirs.push(dir);
      return `file:${join(dir, "moat.db")}`;
    },
  ],
  ["postgres", async () => postgres.createDatabase(`trail_${randomId(8).toLowerCase()}`)],
];

/** A chain of rows for one agent: `spec(i)` gives each event's time, type, session and verdict. */
function chain(
  agentId: string,
  count: number,
  spec: (seq: number) => { time: Date; type?: string; sessionId?: string; verdict?: string; user?: string },
  start = 1,
): IngestRow[] {
  const rows: IngestRow[] = [];
  let prevHash = "";
  for (let seq = start; seq < start + count; seq++) {
    const s = spec(seq);
    const payload = randomBytes(40);
    const hash = createHash("sha256").update(payload).digest("hex");
    rows.push({
      id: `${agentId}-${String(seq).padStart(6, "0")}`,
      seq: BigInt(seq),
      time: s.time,
      type: s.type ?? "db.query",
      user: s.user ?? "alice@example.com",
      resource: "orders-db",
      sessionId: s.sessionId ?? "",
      verdict: s.verdict ?? "allow",
      rule: "",
      text: `select ${seq}`,
      bundleVersion: 1n,
      prevHash,
      hash,
      payload,
    });
    prevHash = hash;
  }
  return rows;
}

async function newAgent(store: Store): Promise<string> {
  const id = randomId(16);
  await store.agents.create({
    id,
    name: `a-${id}`,
    description: "",
    enrolmentHash: "x",
    enrolmentExpiresAt: new Date(),
  });
  return id;
}

/** PostgreSQL: the bytes the audit table takes on disk, its indexes and TOAST included. */
async function auditTableBytes(client: pg.Client): Promise<number> {
  const { rows } = await client.query<{ bytes: string }>(`SELECT pg_total_relation_size('"AuditEvent"') AS bytes`);
  return Number(rows[0]?.bytes);
}

describe.each(providers)("audit trail on %s", (provider, makeUrl) => {
  let store: Store;
  let url: string;

  beforeAll(async () => {
    url = await makeUrl();
    store = await openStore(url);
  });
  afterAll(async () => store?.close());

  it("stores every event once, whether resent, overlapping or sent twice at the same time", async () => {
    const agentId = await newAgent(store);
    const base = Date.now();
    const rows = chain(agentId, 25, (seq) => ({
      time: new Date(base + seq * 10),
      sessionId: seq <= 10 ? "S1" : "S2",
      type: seq === 1 || seq === 11 ? "session.start" : seq === 10 ? "session.end" : "db.query",
      verdict: seq === 3 || seq === 12 ? "deny" : "allow",
      user: seq === 11 ? "" : `user-${seq <= 10 ? 1 : 2}@example.com`,
    }));
    const at = new Date();
    expect(await store.auditTrail.ingest(agentId, rows.slice(0, 6), 6n, at)).toBe(6);
    expect(await store.auditTrail.ingest(agentId, rows.slice(3, 10), 10n, at)).toBe(4);
    expect(await store.auditTrail.ingest(agentId, rows.slice(0, 10), 10n, at)).toBe(0);
    const concurrent = await Promise.all([
      store.auditTrail.ingest(agentId, rows.slice(10, 20), 20n, at),
      store.auditTrail.ingest(agentId, rows.slice(10, 20), 20n, at),
      store.auditTrail.ingest(agentId, rows.slice(14, 25), 25n, at),
    ]);
    expect(concurrent.reduce((a, b) => a + b, 0)).toBe(15);
    expect((await store.agents.findById(agentId))?.auditSeq).toBe(25n);

    const stored = await store.auditEvents.chain(agentId, 0n, 100);
    expect(stored.map((r) => Number(r.seq))).toEqual(rows.map((_, i) => i + 1));
    expect(stored[4]).toMatchObject({ id: rows[4]?.id, hash: rows[4]?.hash, time: rows[4]?.time, text: "select 5" });
    expect(Buffer.from(stored[4]?.payload ?? [])).toEqual(Buffer.from(rows[4]?.payload ?? []));

    const s1 = await store.auditTrail.session("S1", agentId);
    expect(s1).toEqual({
      agentId,
      sessionId: "S1",
      user: "user-1@example.com",
      resource: "orders-db",
      startedAt: new Date(base + 10),
      endedAt: new Date(base + 100),
      lastEventAt: new Date(base + 100),
      eventCount: 10,
      statementCount: 8,
      deniedCount: 1,
    });
    // S2 arrived in pieces and twice: counted once; its user came with its second event.
    expect(await store.auditTrail.session("S2")).toMatchObject({
      agentId,
      user: "user-2@example.com",
      startedAt: new Date(base + 110),
      endedAt: null,
      lastEventAt: new Date(base + 250),
      eventCount: 15,
      statementCount: 14,
      deniedCount: 1,
    });
    const events = await store.auditTrail.sessionEvents(agentId, "S2", 12n, 5);
    expect(events.map((e) => Number(e.seq))).toEqual([13, 14, 15, 16, 17]);
  });

  it("lists sessions most recently started first, filtered, with a keyset", async () => {
    const agentId = await newAgent(store);
    const base = Date.UTC(2031, 0, 1);
    const rows = chain(agentId, 12, (seq) => ({
      time: new Date(base + seq * 1000),
      sessionId: `L${Math.ceil(seq / 2)}`, // six sessions of two events
      user: seq <= 6 ? "dora@example.com" : "erin@example.com",
    }));
    await store.auditTrail.ingest(agentId, rows, 12n, new Date());
    const page1 = await store.auditTrail.sessions({ agentId }, 4);
    expect(page1.map((s) => s.sessionId)).toEqual(["L6", "L5", "L4", "L3"]);
    const last = page1[3]!;
    const page2 = await store.auditTrail.sessions(
      { agentId, before: { startedAt: last.startedAt, sessionId: last.sessionId, agentId: last.agentId } },
      4,
    );
    expect(page2.map((s) => s.sessionId)).toEqual(["L2", "L1"]);
    expect(
      (await store.auditTrail.sessions({ agentId, user: "dora@example.com" }, 10)).map((s) => s.sessionId),
    ).toEqual(["L3", "L2", "L1"]);
    // Active in [since, until): an event at or after `since`, started before `until`.
    const ranged = await store.auditTrail.sessions(
      { agentId, since: new Date(base + 4000), until: new Date(base + 9000) },
      10,
    );
    expect(ranged.map((s) => s.sessionId)).toEqual(["L4", "L3", "L2"]);
  });

  it("prunes a chain's prefix in bounded batches, moves its horizon and drops emptied sessions", async () => {
    const agentId = await newAgent(store);
    const base = Date.UTC(2001, 0, 1);
    const time = (seq: number) => new Date(base + seq * 1000);
    const rows = chain(agentId, 30, (seq) => ({ time: time(seq), sessionId: `P${Math.ceil(seq / 10)}` }));
    await store.auditTrail.ingest(agentId, rows, 30n, new Date());
    const now = () => new Date();

    const first = await store.auditTrail.prune({ cutoff: time(15), batchSize: 4, now });
    expect(first).toMatchObject({ pruned: 14, sessions: 1 });
    expect(await store.auditTrail.horizon(agentId)).toEqual({
      agentId,
      seq: 14n,
      hash: rows[13]?.hash,
      time: time(14),
      pruned: 14n,
    });
    expect(Number((await store.auditEvents.chain(agentId, 0n, 1))[0]?.seq)).toBe(15);
    expect(await store.auditTrail.session("P1", agentId)).toBeUndefined();
    expect(await store.auditTrail.session("P2", agentId)).toMatchObject({ eventCount: 10 });

    // Everything of this agent is old now, but its newest event stays (it anchors the chain).
    const second = await store.auditTrail.prune({ cutoff: new Date(Date.UTC(2002, 0, 1)), batchSize: 4, now });
    expect(second).toMatchObject({ pruned: 15, sessions: 1 });
    expect((await store.auditEvents.chain(agentId, 0n, 10)).map((r) => Number(r.seq))).toEqual([30]);
    expect(await store.auditTrail.horizon(agentId)).toMatchObject({ seq: 29n, hash: rows[28]?.hash, pruned: 29n });
    expect(await store.auditTrail.session("P3", agentId)).toBeDefined();
    // A second run finds nothing more to prune.
    expect(await store.auditTrail.prune({ cutoff: new Date(Date.UTC(2002, 0, 1)), batchSize: 4, now })).toMatchObject({
      pruned: 0,
    });
  });

  it("finds the cutoff that keeps the newest N events", async () => {
    const own = await openStore(await makeUrl());
    try {
      const agentId = await newAgent(own);
      const base = Date.UTC(2020, 5, 1);
      await own.auditTrail.ingest(
        agentId,
        chain(agentId, 10, (seq) => ({ time: new Date(base + seq * 1000) })),
        10n,
        new Date(),
      );
      expect(await own.auditTrail.countCutoff(3)).toEqual(new Date(base + 7000));
      expect(await own.auditTrail.countCutoff(10)).toBeUndefined();
    } finally {
      await own.close();
    }
  });

  it("says how many bytes its events use, so a size limit keeps about the newest that fit", async () => {
    const ownUrl = await makeUrl();
    const own = await openStore(ownUrl);
    const client = provider === "postgres" ? new pg.Client({ connectionString: ownUrl }) : undefined;
    await client?.connect();
    try {
      const agentId = await newAgent(own);
      const base = Date.UTC(2004, 0, 1);
      const total = 4000;
      const rows = chain(agentId, total, (seq) => ({
        time: new Date(base + seq * 1000),
        sessionId: `S${seq >> 6}`,
      })).map((row, i) => ({
        ...row,
        text: `SELECT '${"x".repeat(150 + (i % 100))}' FROM orders WHERE id = ${i}`,
        payload: randomBytes(300 + (i % 200)),
      }));
      for (let i = 0; i < total; i += 500)
        await own.auditTrail.ingest(agentId, rows.slice(i, i + 500), BigInt(Math.min(i + 500, total)), new Date());
      const used = (await own.auditTrail.usedBytes()) as number;
      if (client) {
        // A freshly written table has no dead space: the estimate is close to its real size.
        const ratio = used / (await auditTableBytes(client));
        expect(ratio).toBeGreaterThan(0.75);
        expect(ratio).toBeLessThan(1.33);
      }
      expect(used).toBeGreaterThan(total * 600);
      const audit = createAuditService({ store: own });
      const maxBytes = Math.floor(used / 2);
      const retention = createAuditRetention({
        store: own,
        audit,
        logger: createLogger({ name: "test", level: "silent" }),
        config: { maxBytes, intervalMinutes: 60, batchSize: 500, holdForSinks: true },
      });
      const run = await retention.runOnce();
      // About half the events go, the oldest; the estimate follows them down.
      expect(run?.pruned).toBeGreaterThan(total * 0.4);
      expect(run?.pruned).toBeLessThan(total * 0.6);
      expect(Number((await own.auditEvents.chain(agentId, 0n, 1))[0]?.seq)).toBe((run?.pruned ?? 0) + 1);
      expect((await own.auditTrail.usedBytes()) as number).toBeLessThanOrEqual(maxBytes * 1.25);
      if (!client) return;
      // PostgreSQL keeps the freed space and reuses it once (auto)vacuum has seen it: with events
      // coming and the limit enforced, the table stops growing at about its size at the limit.
      const before = await auditTableBytes(client);
      let next = total;
      for (let round = 0; round < 4; round++) {
        await client.query(`VACUUM "AuditEvent"`);
        const more = rows.slice(0, 1000).map((row, i) => ({
          ...row,
          id: `${agentId}-r${round}-${i}`,
          seq: BigInt(next + i + 1),
          time: new Date(base + (next + i + 1) * 1000),
        }));
        await own.auditTrail.ingest(agentId, more, BigInt(next + 1000), new Date());
        next += 1000;
        await retention.runOnce();
      }
      expect(await auditTableBytes(client)).toBeLessThan(before * 1.3);
    } finally {
      await client?.end();
      await own.close();
    }
  });

  it("estimates the size of events with long, TOASTed texts too (PostgreSQL)", async () => {
    if (provider !== "postgres") return;
    const ownUrl = await makeUrl();
    const own = await openStore(ownUrl);
    const client = new pg.Client({ connectionString: ownUrl });
    await client.connect();
    try {
      const agentId = await newAgent(own);
      const base = Date.UTC(2005, 0, 1);
      const total = 600;
      // Every third statement is 12 000 characters of hex (stored out of line, in TOAST).
      const rows = chain(agentId, total, (seq) => ({ time: new Date(base + seq * 1000) })).map((row, i) => ({
        ...row,
        text: i % 3 === 0 ? `SELECT '${randomBytes(6000).toString("hex")}'` : row.text,
        payload: randomBytes(300),
      }));
      await own.auditTrail.ingest(agentId, rows, BigInt(total), new Date());
      const used = (await own.auditTrail.usedBytes()) as number;
      const ratio = used / (await auditTableBytes(client));
      expect(ratio).toBeGreaterThan(0.75);
      expect(ratio).toBeLessThan(1.33);
    } finally {
      await client.end();
      await own.close();
    }
  });

  it("lets one pruner run at a time", async () => {
    const prune = () => store.auditTrail.prune({ cutoff: new Date(0), batchSize: 100, now: () => new Date() });
    if (provider === "sqlite") {
      const results = await Promise.all([prune(), prune()]);
      expect(results.filter((r) => r === undefined)).toHaveLength(1);
      return;
    }
    // Another replica holds the lock: this one skips the run.
    const holder = new pg.Client({ connectionString: url });
    await holder.connect();
    try {
      await holder.query("SELECT pg_advisory_lock(7885631198462338420)");
      expect(await prune()).toBeUndefined();
      await holder.query("SELECT pg_advisory_unlock(7885631198462338420)");
      expect(await prune()).toEqual({ pruned: 0, agents: 0, sessions: 0, held: 0 });
    } finally {
      await holder.end();
    }
  });
});

describe("WAL checkpoints (SQLite)", () => {
  it("are done by the worker thread, not by the store's connections", async () => {
    const dir = tempDir();
    dirs.push(dir);
    const file = join(dir, "moat.db");
    const store = await openStore(`file:${file}`);
    const reader = new Database(file, { readonly: true });
    try {
      const agentId = await newAgent(store);
      const rows = chain(agentId, 3000, (seq) => ({ time: new Date(Date.UTC(2010, 0, 1) + seq) }));
      for (let i = 0; i < rows.length; i += 500)
        await store.auditTrail.ingest(agentId, rows.slice(i, i + 500), BigInt(i + 500), new Date());
      // Nothing writes any more: only the worker can bring every page of the log into the file.
      const pages = () => Number(reader.pragma("page_count", { simple: true })) * 4096;
      expect(reader.pragma("page_size", { simple: true })).toBe(4096);
      const deadline = Date.now() + 5000;
      while (statSync(file).size < pages() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(statSync(file).size).toBe(pages());
      expect(reader.prepare('SELECT COUNT(*) AS n FROM "AuditEvent"').get()).toEqual({ n: 3000 });
    } finally {
      reader.close();
      await store.close();
    }
  });

  it("empties a log grown past its limit when a writer asks, so the log stays bounded", async () => {
    const dir = tempDir();
    dirs.push(dir);
    const file = join(dir, "t.db");
    const db = new Database(file);
    db.pragma("journal_mode = WAL");
    db.pragma("wal_autocheckpoint = 0");
    db.exec("CREATE TABLE t (b BLOB)");
    const checkpointer = await startWalCheckpointer(file, {
      intervalMs: 60_000, // no passive checkpoint during the test
      maxLogBytes: 1024 * 1024,
      onFailure: (e) => {
        throw e;
      },
    });
    try {
      const insert = db.prepare("INSERT INTO t (b) VALUES (?)");
      await checkpointer.makeRoom(); // under the limit: nothing to do
      db.transaction(() => {
        for (let i = 0; i < 600; i++) insert.run(randomBytes(4096));
      })();
      expect(statSync(`${file}-wal`).size).toBeGreaterThan(2 * 1024 * 1024);
      await checkpointer.makeRoom();
      expect(statSync(`${file}-wal`).size).toBe(0);
      expect(db.prepare("SELECT COUNT(*) AS n FROM t").get()).toEqual({ n: 600 });
    } finally {
      await checkpointer.close();
      db.close();
    }
  });

  it("reports a worker that cannot start, so the store falls back to SQLite's own checkpoints", async () => {
    const failures: Error[] = [];
    const checkpointer = await startWalCheckpointer(tempDir(), { onFailure: (e) => failures.push(e) });
    await new Promise((r) => setTimeout(r, 200));
    expect(failures).toHaveLength(1);
    await checkpointer.close();
  });
});

describe("0006_audit_sessions", () => {
  function upTo(provider: "sqlite" | "postgres", last: string): string {
    const dir = join(tempDir(), provider);
    dirs.push(dir);
    mkdirSync(dir, { recursive: true });
    for (const f of readdirSync(join(migrations, provider)).sort())
      if (f.endsWith(".sql") && f.slice(0, 4) <= last) copyFileSync(join(migrations, provider, f), join(dir, f));
    return dir;
  }
  const insert = `INSERT INTO "AuditEvent" ("id", "agentId", "seq", "time", "type", "user", "resource", "sessionId", "verdict", "hash", "payload")
    VALUES ('e1', 'a', 1, $T1, 'session.start', 'u@example.com', 'db', 'S', 'allow', 'h', $P),
           ('e2', 'a', 2, $T2, 'db.query', 'u@example.com', 'db', 'S', 'deny', 'h', $P),
           ('e3', 'a', 3, $T3, 'session.end', 'u@example.com', 'db', 'S', 'allow', 'h', $P),
           ('e4', 'a', 4, $T3, 'agent.started', '', '', '', '', 'h', $P)`;

  it("summarises the sessions of events stored before it (SQLite)", async () => {
    const dir = tempDir();
    dirs.push(dir);
    const file = join(dir, "moat.db");
    migrateSqlite(file, upTo("sqlite", "0005"));
    const db = new Database(file);
    db.exec(
      insert
        .replace("$T1", "'2024-01-01T00:00:01.000+00:00'")
        .replace("$T2", "'2024-01-01T00:00:02.000+00:00'")
        .replaceAll("$T3", "'2024-01-01T00:00:03.000+00:00'")
        .replaceAll("$P", "x'00'"),
    );
    db.close();
    const store = await openStore(`file:${file}`);
    try {
      expect(store.migrationsApplied).toEqual(["0006_audit_sessions"]);
      expect(await store.auditTrail.session("S")).toEqual({
        agentId: "a",
        sessionId: "S",
        user: "u@example.com",
        resource: "db",
        startedAt: new Date("2024-01-01T00:00:01Z"),
        endedAt: new Date("2024-01-01T00:00:03Z"),
        lastEventAt: new Date("2024-01-01T00:00:03Z"),
        eventCount: 3,
        statementCount: 1,
        deniedCount: 1,
      });
      expect(await store.auditTrail.sessions({}, 10)).toHaveLength(1);
    } finally {
      await store.close();
    }
  });

  it("summarises the sessions of events stored before it (PostgreSQL)", async () => {
    const url = await postgres.createDatabase(`backfill_${randomId(8).toLowerCase()}`);
    await migratePostgres(url, upTo("postgres", "0005"));
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    await client.query(
      insert
        .replace("$T1", "'2024-01-01 00:00:01'")
        .replace("$T2", "'2024-01-01 00:00:02'")
        .replaceAll("$T3", "'2024-01-01 00:00:03'")
        .replaceAll("$P", "'\\x00'::bytea"),
    );
    await client.end();
    const store = await openStore(url);
    try {
      expect(store.migrationsApplied).toEqual(["0006_audit_sessions"]);
      expect(await store.auditTrail.session("S")).toMatchObject({
        startedAt: new Date("2024-01-01T00:00:01Z"),
        endedAt: new Date("2024-01-01T00:00:03Z"),
        eventCount: 3,
        statementCount: 1,
        deniedCount: 1,
      });
    } finally {
      await store.close();
    }
  });
});
