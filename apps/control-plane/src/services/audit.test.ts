import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger, createUlidFactory } from "@moat/common";
import { AuditEventSchema, create, timestampFromDate, toBinary, Verdict } from "@moat/proto";
import { createTestApp, type TestApp } from "../test-support/app.js";
import { createAuditService } from "./audit.js";
import { createAuditRetention } from "./audit-retention.js";

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp();
});
afterAll(async () => t?.close());

function chain(n: number, start = 1): Uint8Array[] {
  const out: Uint8Array[] = [];
  let prev: Uint8Array = new Uint8Array(0);
  for (let i = 0; i < n; i++) {
    const seq = BigInt(start + i);
    const bytes = toBinary(
      AuditEventSchema,
      create(AuditEventSchema, {
        id: `01JD${String(seq).padStart(22, "0")}`,
        seq,
        time: timestampFromDate(new Date(1_700_000_000_000 + i)),
        type: "db.query",
        actor: { user: "alice@example.com" },
        resource: "orders-db",
        verdict: i % 2 ? Verdict.DENY : Verdict.ALLOW,
        prevHash: prev,
        detail: { case: "dbQuery", value: { text: `select ${i}` } },
      }),
    );
    prev = createHash("sha256").update(bytes).digest();
    out.push(bytes);
  }
  return out;
}

describe("audit ingestion", () => {
  it("stores a resent batch once, acks the last sequence, and the chain verifies", async () => {
    const agent = await t.store.agents.create({
      id: "auditagent000001",
      name: "audit-agent",
      description: "",
      enrolmentHash: "x",
      enrolmentExpiresAt: new Date(),
    });
    const audit = createAuditService({ store: t.store });
    const events = chain(10);
    expect(await audit.ingest(agent.id, events.slice(0, 6))).toEqual({ stored: 6, lastSeq: 6n });
    expect(await audit.ingest(agent.id, events.slice(3, 10))).toEqual({ stored: 4, lastSeq: 10n }); // overlap resent
    expect(await audit.ingest(agent.id, events)).toEqual({ stored: 0, lastSeq: 10n });
    expect((await t.store.agents.findById(agent.id))?.auditSeq).toBe(10n);
    expect(await audit.verify(agent.id)).toEqual({ agentId: agent.id, checked: 10, ok: true });
    const denied = await audit.search({ agentId: agent.id, verdict: "deny", text: "select" }, 100);
    expect(denied.items.map((e) => e.seq)).toEqual(["10", "8", "6", "4", "2"]);
    expect(denied.items[0]?.detail).toMatchObject({ kind: "dbQuery", text: "select 9" });
  });

  it("refuses malformed events without storing any of the batch", async () => {
    const audit = createAuditService({ store: t.store });
    await expect(
      audit.ingest("auditagent000001", [chain(1, 11)[0] as Uint8Array, Uint8Array.from([0xff, 0xff, 0xff])]),
    ).rejects.toMatchObject({ code: "bad_request" });
    expect((await t.store.agents.findById("auditagent000001"))?.auditSeq).toBe(10n);
  });
});

describe("control-plane actions in the audit trail", () => {
  it("records policy, user, token and login events in a verifiable chain, without secrets", async () => {
    const admin = t.auth("admin");
    const policy = {
      apiVersion: "moat.dev/v1",
      kind: "Policy",
      metadata: { name: "audited" },
      spec: {
        subjects: { users: ["*"] },
        resources: { names: ["db"] },
        rules: [{ name: "r", effect: "allow", actions: ["connect"] }],
      },
    };
    expect(
      (await t.app.inject({ method: "PUT", url: "/api/v1/policies/audited", headers: admin, payload: policy }))
        .statusCode,
    ).toBe(201);
    const user = (
      await t.app.inject({
        method: "POST",
        url: "/api/v1/users",
        headers: admin,
        payload: { email: "gina@example.com", role: "member", password: "correct horse battery staple" },
      })
    ).json();
    await t.app.inject({
      method: "POST",
      url: "/api/v1/auth/login",
      payload: { email: "gina@example.com", password: "wrong password!" },
    });
    const login = (
      await t.app.inject({
        method: "POST",
        url: "/api/v1/auth/login",
        payload: { email: "gina@example.com", password: "correct horse battery staple" },
      })
    ).json();
    await t.app.inject({ method: "DELETE", url: `/api/v1/tokens/${login.tokenId}`, headers: admin });
    await t.app.inject({
      method: "PATCH",
      url: `/api/v1/users/${user.id}`,
      headers: admin,
      payload: { disabled: true },
    });

    const res = await t.app.inject({
      method: "GET",
      url: "/api/v1/audit/events?agent=control-plane&limit=100",
      headers: t.auth("auditor"),
    });
    const types = (res.json().items as { type: string }[]).map((e) => e.type).reverse();
    expect(types).toEqual(
      expect.arrayContaining([
        "policy.changed",
        "user.created",
        "auth.login_failed",
        "auth.login",
        "token.revoked",
        "user.changed",
      ]),
    );
    expect(JSON.stringify(res.json())).not.toContain("correct horse battery staple");
    expect(JSON.stringify(res.json())).not.toContain(login.accessToken);
    const verify = await t.app.inject({
      method: "GET",
      url: "/api/v1/audit/verify?agent=control-plane",
      headers: t.auth("auditor"),
    });
    expect(verify.json()).toMatchObject({ ok: true });
    expect(verify.json().checked).toBeGreaterThanOrEqual(6);
  });
});

// ------------------------------------------------------------------------------------------------
// Sessions, export and retention (REST through app.inject, and a real socket for backpressure).

const ulid = createUlidFactory();

/**
 * An agent's chain from `start`: sessions of `sessionSize` events (session.start, db.query...,
 * session.end), one event a minute from `base`; every 7th statement denied.
 */
function sessionChain(
  n: number,
  options: { base: number; sessionSize?: number; start?: number; prev?: Uint8Array; text?: (i: number) => string },
): { events: Uint8Array[]; sessions: string[]; last: Uint8Array } {
  const size = options.sessionSize ?? 5;
  const events: Uint8Array[] = [];
  const sessions: string[] = [];
  let prev = options.prev ?? new Uint8Array(0);
  const start = options.start ?? 1;
  for (let i = 0; i < n; i++) {
    const seq = start + i;
    const pos = (seq - 1) % size;
    if (pos === 0) sessions.push(ulid());
    const sessionId = sessions[sessions.length - 1] as string;
    const type = pos === 0 ? "session.start" : pos === size - 1 ? "session.end" : "db.query";
    const bytes = toBinary(
      AuditEventSchema,
      create(AuditEventSchema, {
        id: ulid(),
        seq: BigInt(seq),
        time: timestampFromDate(new Date(options.base + seq * 60_000)),
        type,
        actor: { user: `user${Math.floor((seq - 1) / size) % 2}@example.com` },
        resource: "orders-db",
        sessionId,
        verdict: type === "db.query" && seq % 7 === 0 ? Verdict.DENY : Verdict.ALLOW,
        prevHash: prev,
        ...(type === "db.query"
          ? { detail: { case: "dbQuery" as const, value: { text: options.text?.(seq) ?? `select ${seq}` } } }
          : {}),
      }),
    );
    prev = createHash("sha256").update(bytes).digest();
    events.push(bytes);
  }
  return { events, sessions, last: prev };
}

async function newAgent(name: string): Promise<string> {
  const agent = await t.store.agents.create({
    id: `${name.replace(/[^a-z0-9]/g, "")}${Date.now().toString(36)}`.slice(0, 24),
    name,
    description: "",
    enrolmentHash: "x",
    enrolmentExpiresAt: new Date(),
  });
  return agent.id;
}

const get = async (url: string, role: "admin" | "auditor" | "member" = "auditor") =>
  t.app.inject({ method: "GET", url, headers: t.auth(role) });

describe("sessions", () => {
  it("lists an agent's sessions newest first with counts, and shows one session's events in order", async () => {
    const agentId = await newAgent("sessions-agent");
    const audit = createAuditService({ store: t.store });
    const { events, sessions } = sessionChain(23, { base: Date.UTC(2030, 0, 1) }); // 4 whole sessions, 1 open
    for (let i = 0; i < events.length; i += 4) await audit.ingest(agentId, events.slice(i, i + 4));

    const page1 = await get(`/api/v1/audit/sessions?agent=${agentId}&limit=3`);
    expect(page1.statusCode).toBe(200);
    const body1 = page1.json();
    expect(body1.items.map((s: { sessionId: string }) => s.sessionId)).toEqual([...sessions].reverse().slice(0, 3));
    expect(body1.items[0]).toEqual({
      sessionId: sessions[4],
      agentId,
      user: "user0@example.com",
      resource: "orders-db",
      startedAt: new Date(Date.UTC(2030, 0, 1) + 21 * 60_000).toISOString(),
      endedAt: null,
      lastEventAt: new Date(Date.UTC(2030, 0, 1) + 23 * 60_000).toISOString(),
      eventCount: 3,
      statementCount: 2,
      deniedCount: 0,
    });
    expect(body1.items[1]).toMatchObject({
      sessionId: sessions[3],
      endedAt: new Date(Date.UTC(2030, 0, 1) + 20 * 60_000).toISOString(),
      eventCount: 5,
      statementCount: 3,
      deniedCount: 0,
    });
    // Statement 7 and 14 were denied: sessions 2 (seq 6-10) and 3 (seq 11-15).
    const page2 = (await get(`/api/v1/audit/sessions?agent=${agentId}&limit=3&cursor=${body1.nextCursor}`)).json();
    expect(page2.items.map((s: { sessionId: string }) => s.sessionId)).toEqual([sessions[1], sessions[0]]);
    expect(page2.items[0].deniedCount).toBe(1);
    expect(page2.nextCursor).toBeUndefined();
    const byUser = (await get(`/api/v1/audit/sessions?agent=${agentId}&user=user1@example.com`)).json();
    expect(byUser.items.map((s: { sessionId: string }) => s.sessionId)).toEqual([sessions[3], sessions[1]]);
    const ranged = await get(
      `/api/v1/audit/sessions?agent=${agentId}&since=${new Date(Date.UTC(2030, 0, 1) + 12 * 60_000).toISOString()}` +
        `&until=${new Date(Date.UTC(2030, 0, 1) + 17 * 60_000).toISOString()}`,
    );
    expect(ranged.json().items.map((s: { sessionId: string }) => s.sessionId)).toEqual([sessions[3], sessions[2]]);

    const one = (await get(`/api/v1/audit/sessions/${sessions[1]}?limit=3`)).json();
    expect(one.session).toMatchObject({ sessionId: sessions[1], agentId, eventCount: 5 });
    expect(one.items.map((e: { seq: string }) => e.seq)).toEqual(["6", "7", "8"]);
    expect(one.items[1]).toMatchObject({ verdict: "deny", detail: { kind: "dbQuery", text: "select 7" } });
    const rest = (await get(`/api/v1/audit/sessions/${sessions[1]}?limit=3&cursor=${one.nextCursor}`)).json();
    expect(rest.items.map((e: { seq: string }) => e.seq)).toEqual(["9", "10"]);
    expect(rest.nextCursor).toBeUndefined();
  });

  it("answers an unknown session with 404 and a bad cursor with 400, as problem+json", async () => {
    const missing = await get("/api/v1/audit/sessions/01JDNOSUCHSESSION000000000");
    expect(missing.statusCode).toBe(404);
    expect(missing.headers["content-type"]).toContain("application/problem+json");
    expect(missing.json().code).toBe("not_found");
    expect((await get("/api/v1/audit/sessions?cursor=bm90LWpzb24")).json().code).toBe("bad_request");
    expect((await get("/api/v1/audit/sessions", "member")).statusCode).toBe(403);
  });
});

describe("export", () => {
  it("streams every matching event oldest first as JSON Lines, across several store pages", async () => {
    const agentId = await newAgent("export-agent");
    const audit = createAuditService({ store: t.store });
    const { events } = sessionChain(1234, { base: Date.UTC(2029, 0, 1) });
    for (let i = 0; i < events.length; i += 500) await audit.ingest(agentId, events.slice(i, i + 500));

    const res = await get(`/api/v1/audit/export?agent=${agentId}`);
    expect(res.statusCode).toBe(200);
    expect(res.headers["content-type"]).toBe("application/x-ndjson; charset=utf-8");
    const lines = res.body.split("\n");
    expect(lines.pop()).toBe(""); // every line ends with a newline
    const items = lines.map((l) => JSON.parse(l) as { seq: string; time: string; agentId: string; type: string });
    expect(items).toHaveLength(1234); // three pages of 500
    expect(items.map((e) => Number(e.seq))).toEqual(items.map((_, i) => i + 1));
    expect(items[0]).toMatchObject({
      agentId,
      type: "session.start",
      time: new Date(Date.UTC(2029, 0, 1) + 60_000).toISOString(),
    });

    const denied = (await get(`/api/v1/audit/export?agent=${agentId}&verdict=deny&q=select`)).body.trim().split("\n");
    expect(denied.map((l) => JSON.parse(l).verdict)).toEqual(denied.map(() => "deny"));
    expect(denied.length).toBeGreaterThan(100);
    expect((await get(`/api/v1/audit/export?agent=nobody`)).body).toBe("");
    expect((await get(`/api/v1/audit/export?agent=${agentId}`, "member")).statusCode).toBe(403);
    expect((await get(`/api/v1/audit/export?limit=5`)).json().code).toBe("validation_failed");
  });

  it("reads the store page by page as the client reads: a client that stops reading stops the export", async () => {
    const agentId = await newAgent("export-slow");
    const audit = createAuditService({ store: t.store });
    // ~4 KiB of text per event: 3 000 events are ~13 MiB, far more than the socket buffers hold.
    const { events } = sessionChain(3000, {
      base: Date.UTC(2028, 0, 1),
      text: (i) => `select '${"x".repeat(4000)}' -- ${i}`,
    });
    for (let i = 0; i < events.length; i += 500) await audit.ingest(agentId, events.slice(i, i + 500));
    const search = t.store.auditEvents.search;
    let pages = 0;
    t.store.auditEvents.search = (...args) => {
      if (args[0].agentId === agentId) pages++;
      return search(...args);
    };
    // Over a Unix socket, not TCP: what the kernel buffers between a paused client and the server is
    // then the socket's send buffer (net.core.wmem_default, ~200 KiB), where loopback TCP's
    // autotuned buffers reach tcp_rmem's maximum (32 MiB on some hosts, more than the whole export).
    const dir = mkdtempSync(join(tmpdir(), "moat-export-"));
    const socketPath = join(dir, "cp.sock");
    await t.app.listen({ path: socketPath });
    try {
      const { request } = await import("node:http");
      const received = await new Promise<{ lines: number; pagesWhilePaused: number }>((resolve, reject) => {
        const req = request(
          `http://localhost/api/v1/audit/export?agent=${agentId}`,
          { socketPath, headers: t.auth("auditor") },
          (res) => {
            let text = "";
            let pagesWhilePaused = -1;
            res.once("data", (chunk: Buffer) => {
              text += chunk.toString();
              res.pause();
              setTimeout(() => {
                pagesWhilePaused = pages;
                res.on("data", (c: Buffer) => (text += c.toString()));
                res.resume();
              }, 500);
            });
            res.on("end", () => resolve({ lines: text.split("\n").filter(Boolean).length, pagesWhilePaused }));
            res.on("error", reject);
          },
        );
        req.on("error", reject);
        req.end();
      });
      // Six pages hold everything; while the client was paused only the page being written and the
      // next one had been read (the socket and the streams' buffers hold a fraction of one page).
      expect(received.pagesWhilePaused).toBeGreaterThanOrEqual(1);
      expect(received.pagesWhilePaused).toBeLessThanOrEqual(3);
      expect(received.lines).toBe(3000);
      expect(pages).toBe(7); // six full pages, then an empty one ends it
    } finally {
      t.store.auditEvents.search = search;
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("fetches pages lazily from the store (the generator itself)", async () => {
    const agentId = await newAgent("export-lazy");
    const counting = { ...t.store.auditEvents };
    let calls = 0;
    counting.search = (...args) => {
      calls++;
      return t.store.auditEvents.search(...args);
    };
    const audit = createAuditService({
      store: { auditEvents: counting, auditTrail: t.store.auditTrail, auditSinks: t.store.auditSinks },
      exportBatch: 10,
    });
    await audit.ingest(agentId, sessionChain(95, { base: Date.UTC(2027, 0, 1) }).events);
    const lines = audit.exportLines({ agentId });
    const first = await lines.next();
    expect(first.value.split("\n").filter(Boolean)).toHaveLength(10);
    expect(calls).toBe(1);
    let total = 10;
    for await (const chunk of lines) total += chunk.split("\n").filter(Boolean).length;
    expect(total).toBe(95);
    expect(calls).toBe(10);
  });
});

describe("events in both orders", () => {
  it("pages oldest first with order=asc and the same cursor scheme", async () => {
    const agentId = await newAgent("order-agent");
    await createAuditService({ store: t.store }).ingest(
      agentId,
      sessionChain(7, { base: Date.UTC(2026, 0, 1) }).events,
    );
    const page = (await get(`/api/v1/audit/events?agent=${agentId}&order=asc&limit=3`)).json();
    expect(page.items.map((e: { seq: string }) => e.seq)).toEqual(["1", "2", "3"]);
    const next = (
      await get(`/api/v1/audit/events?agent=${agentId}&order=asc&limit=3&cursor=${page.nextCursor}`)
    ).json();
    expect(next.items.map((e: { seq: string }) => e.seq)).toEqual(["4", "5", "6"]);
    const newest = (await get(`/api/v1/audit/events?agent=${agentId}&limit=3`)).json();
    expect(newest.items.map((e: { seq: string }) => e.seq)).toEqual(["7", "6", "5"]);
  });
});

describe("following the trail as it is stored", () => {
  it("returns each agent's events in sequence order after the cursor, waits for a hole, then passes it", async () => {
    let clock = Date.UTC(2031, 0, 1);
    const audit = createAuditService({ store: t.store, now: () => new Date(clock) });
    const agentId = await newAgent("follow-agent");
    const start = await audit.follow({ agentId }, 100);
    expect(start.items).toEqual([]);
    const chain = sessionChain(10, { base: Date.UTC(2031, 0, 1) });
    await audit.ingest(agentId, chain.events.slice(0, 3)); // 1-3
    await audit.ingest(agentId, chain.events.slice(5, 8)); // 6-8: 4 and 5 are missing
    const first = await audit.follow({ agentId }, 100, start.cursor);
    expect(first.items.map((e) => e.seq)).toEqual(["1", "2", "3"]);
    clock += 1000;
    const waiting = await audit.follow({ agentId }, 100, first.cursor);
    expect(waiting.items).toEqual([]);
    // Filled in time (a late commit): delivered in order.
    await audit.ingest(agentId, chain.events.slice(3, 4)); // 4
    const filled = await audit.follow({ agentId }, 100, waiting.cursor);
    expect(filled.items.map((e) => e.seq)).toEqual(["4"]);
    // 5 never comes: after the grace it is passed, and 6-8 follow.
    clock += 11_000;
    const passed = await audit.follow({ agentId }, 100, filled.cursor);
    const rest = await audit.follow({ agentId }, 100, passed.cursor);
    expect([...passed.items, ...rest.items].map((e) => e.seq)).toEqual(["6", "7", "8"]);
    // Filters apply to what is returned; the cursor still moves past what was read.
    await audit.ingest(agentId, chain.events.slice(8, 10)); // 9-10
    const filtered = await audit.follow({ agentId, type: "no.such.type" }, 100, rest.cursor);
    expect(filtered.items).toEqual([]);
    expect((await audit.follow({ agentId }, 100, filtered.cursor)).items).toEqual([]);
    await expect(audit.follow({}, 10, "not-a-cursor")).rejects.toMatchObject({ code: "bad_request" });
    // Over REST, auditors only.
    expect((await get(`/api/v1/audit/follow?agent=${agentId}`)).json()).toMatchObject({ items: [] });
    expect((await get(`/api/v1/audit/follow?agent=${agentId}`, "member")).statusCode).toBe(403);
    expect((await get(`/api/v1/audit/follow?cursor=x`)).json().code).toBe("bad_request");
  });
});

describe("retention", () => {
  const silent = createLogger({ name: "test", level: "silent" });
  const DAY = 24 * 3600 * 1000;

  function tamper(sql: string, ...params: unknown[]): void {
    const db = new Database(t.dbFile);
    try {
      db.prepare(sql).run(...params);
    } finally {
      db.close();
    }
  }

  it("prunes old events, records audit.retention, and verify starts the chain at the horizon", async () => {
    const agentId = await newAgent("retention-agent");
    const audit = createAuditService({ store: t.store });
    const base = Date.UTC(2001, 0, 1);
    const first = sessionChain(40, { base });
    await audit.ingest(agentId, first.events);
    // 30 days after event 25: events 1-24 are older than that.
    const now = () => new Date(base + 25 * 60_000 + 30 * DAY);
    const retention = createAuditRetention({
      store: t.store,
      audit,
      logger: silent,
      config: { days: 30, intervalMinutes: 60, batchSize: 100, holdForSinks: true },
      now,
    });
    const run = await retention.runOnce();
    expect(run).toMatchObject({ pruned: 24, agents: 1, cutoff: new Date(base + 25 * 60_000) });
    const report = await audit.verify(agentId);
    expect(report).toEqual({
      agentId,
      checked: 16,
      ok: true,
      horizon: { seq: "24", time: new Date(base + 24 * 60_000), pruned: "24" },
    });
    const recorded = (await get("/api/v1/audit/events?agent=control-plane&type=audit.retention")).json();
    expect(recorded.items[0].message).toMatch(
      /^retention \(30 days\) pruned 24 audit events of 1 chain\(s\) recorded before 2001-/,
    );
    const verified = (await get(`/api/v1/audit/verify?agent=${agentId}`)).json();
    expect(verified).toMatchObject({ ok: true, horizon: { seq: "24" } });
    // Sessions of pruned events are gone; the one that straddles the horizon stays.
    expect(await t.store.auditTrail.session(first.sessions[0] as string)).toBeUndefined();
    expect((await t.store.auditTrail.session(first.sessions[4] as string))?.eventCount).toBe(5);

    // The chain goes on after pruning.
    await audit.ingest(agentId, sessionChain(5, { base, start: 41, prev: first.last }).events);
    expect(await audit.verify(agentId)).toMatchObject({ ok: true, checked: 21 });
  });

  it("keeps events a configured sink has not delivered yet, and prunes them once it has", async () => {
    const agentId = await newAgent("held-by-sink");
    const audit = createAuditService({ store: t.store });
    const base = Date.UTC(2003, 0, 1);
    const chain = sessionChain(40, { base });
    await audit.ingest(agentId, chain.events);
    const now = () => new Date(base + 25 * 60_000 + 30 * DAY); // events 1-24 are past 30 days
    const cursorKey = (sink: string) => `audit.sink.${sink}.cursor`;
    const setCursor = (sink: string, value: string) =>
      tamper(
        `INSERT INTO "Setting" ("key", "value", "updatedAt") VALUES (?, ?, ?)
         ON CONFLICT ("key") DO UPDATE SET "value" = excluded."value"`,
        cursorKey(sink),
        value,
        new Date().toISOString(),
      );
    const cursor = (seq: number) => JSON.stringify({ v: 1, sources: { [agentId]: String(seq) } });
    const retention = (holdForSinks: boolean, sinkIds: string[]) =>
      createAuditRetention({
        store: t.store,
        audit,
        logger: silent,
        config: { days: 30, intervalMinutes: 60, batchSize: 7, holdForSinks },
        sinkIds,
        now,
      });
    const stored = async () => (await t.store.auditEvents.search({ agentId }, 100)).length;

    // A sink that has not started yet (no cursor) holds the whole chain.
    // (Other tests' chains share this store: counts are checked on this chain.)
    expect((await retention(true, ["webhook.siem"]).runOnce())?.held).toBeGreaterThanOrEqual(1);
    expect(await stored()).toBe(40);
    // An unreadable cursor is no licence either.
    setCursor("webhook.siem", "{not json");
    expect((await retention(true, ["webhook.siem"]).runOnce())?.held).toBeGreaterThanOrEqual(1);
    expect(await stored()).toBe(40);
    // Two sinks: the slower one decides. Delivered up to 10 and up to 15: 1-10 go.
    setCursor("webhook.siem", cursor(15));
    setCursor("nats", cursor(10));
    await retention(true, ["webhook.siem", "nats"]).runOnce();
    expect(await stored()).toBe(30);
    expect(await audit.verify(agentId)).toMatchObject({ ok: true, horizon: { seq: "10" } });
    const recorded = (await get("/api/v1/audit/events?agent=control-plane&type=audit.retention")).json();
    expect(recorded.items[0].message).toMatch(/chain\(s\) kept older events audit sinks had not delivered yet/);
    // Both caught up past the cutoff: everything older than it goes (the cursor is not a floor).
    setCursor("webhook.siem", cursor(40));
    setCursor("nats", cursor(30));
    await retention(true, ["webhook.siem", "nats"]).runOnce();
    expect(await stored()).toBe(16);
    expect(await audit.verify(agentId)).toMatchObject({ ok: true, horizon: { seq: "24" } });

    // holdForSinks: false prunes by age alone.
    const other = await newAgent("not-held");
    await audit.ingest(other, sessionChain(40, { base }).events);
    expect(await retention(false, ["webhook.siem"]).runOnce()).toMatchObject({ held: 0 });
    expect((await t.store.auditEvents.search({ agentId: other }, 100)).length).toBe(16);
  });

  it("still names events altered or deleted inside the retained range", async () => {
    const audit = createAuditService({ store: t.store });
    const base = Date.UTC(2002, 0, 1);
    const setUp = async (name: string) => {
      const agentId = await newAgent(name);
      await audit.ingest(agentId, sessionChain(30, { base }).events);
      await t.store.auditTrail.prune({ cutoff: new Date(base + 11 * 60_000), batchSize: 4, now: () => new Date() });
      expect(await audit.verify(agentId)).toMatchObject({ ok: true, checked: 20, horizon: { seq: "10" } });
      return agentId;
    };
    const altered = await setUp("ret-altered");
    tamper(`UPDATE "AuditEvent" SET "text" = 'nothing to see' WHERE "agentId" = ? AND "seq" = 14`, altered);
    expect(await audit.verify(altered)).toMatchObject({
      ok: false,
      firstBreak: { seq: "14", problem: expect.stringContaining("altered") },
    });
    const middle = await setUp("ret-middle");
    tamper(`DELETE FROM "AuditEvent" WHERE "agentId" = ? AND "seq" = 20`, middle);
    expect(await audit.verify(middle)).toMatchObject({
      ok: false,
      firstBreak: { seq: "20", problem: "events 20..20 are missing" },
    });
    // The oldest retained events deleted by hand (not by retention): the horizon says where the chain starts.
    const start = await setUp("ret-start");
    tamper(`DELETE FROM "AuditEvent" WHERE "agentId" = ? AND "seq" IN (11, 12)`, start);
    expect(await audit.verify(start)).toMatchObject({
      ok: false,
      firstBreak: { seq: "11", problem: "events 11..12 are missing" },
    });
    // A forged horizon does not match the hash the first retained event carries.
    const forged = await setUp("ret-forged");
    tamper(`UPDATE "AuditHorizon" SET "hash" = ? WHERE "agentId" = ?`, "0".repeat(64), forged);
    expect(await audit.verify(forged)).toMatchObject({
      ok: false,
      firstBreak: { seq: "11", problem: expect.stringContaining("retention horizon") },
    });
    // Without any horizon, a chain must start at 1.
    const headless = await newAgent("no-horizon");
    await audit.ingest(headless, sessionChain(5, { base }).events);
    tamper(`DELETE FROM "AuditEvent" WHERE "agentId" = ? AND "seq" = 1`, headless);
    expect(await audit.verify(headless)).toMatchObject({
      ok: false,
      firstBreak: { seq: "1", problem: "events 1..1 are missing" },
    });
  });

  it("keeps at most maxEvents, the control plane's own chain included, which still verifies and grows", async () => {
    const own = await createTestApp();
    try {
      const audit = createAuditService({ store: own.store });
      for (let i = 0; i < 12; i++)
        await audit.recordControlPlane({ type: "user.created", actor: "admin@example.com", message: `user ${i}` });
      const retention = createAuditRetention({
        store: own.store,
        audit,
        logger: silent,
        config: { maxEvents: 5, intervalMinutes: 60, batchSize: 100, holdForSinks: true },
      });
      const run = await retention.runOnce();
      expect(run?.pruned).toBeGreaterThanOrEqual(7);
      const events = await own.store.auditEvents.search({ agentId: "control-plane" }, 100);
      // Five kept (ties at the cutoff's millisecond may go too), plus the audit.retention event itself.
      expect(events.length).toBeLessThanOrEqual(6);
      expect(events[0]?.type).toBe("audit.retention");
      const report = await audit.verify("control-plane");
      expect(report).toMatchObject({ ok: true, checked: events.length });
      expect(report.horizon?.pruned).toBe(String(run?.pruned));
      await audit.recordControlPlane({ type: "user.created", actor: "admin@example.com", message: "after" });
      expect(await audit.verify("control-plane")).toMatchObject({ ok: true, checked: events.length + 1 });
    } finally {
      await own.close();
    }
  });

  it("keeps the SQLite store under maxBytes by pruning the oldest events", async () => {
    const own = await createTestApp();
    try {
      const audit = createAuditService({ store: own.store });
      const agentRow = await own.store.agents.create({
        id: `sizeagent${Date.now().toString(36)}`.slice(0, 24),
        name: "size-agent",
        description: "",
        enrolmentHash: "x",
        enrolmentExpiresAt: new Date(),
      });
      const base = Date.UTC(2004, 0, 1);
      const chain = sessionChain(4000, {
        base,
        text: (i) => `SELECT '${"x".repeat(200)}' FROM orders WHERE id = ${i}`,
      });
      for (let i = 0; i < chain.events.length; i += 500)
        await audit.ingest(agentRow.id, chain.events.slice(i, i + 500));
      const used = (await own.store.auditTrail.usedBytes()) as number;
      expect(used).toBeGreaterThan(4 * 1024 * 1024);
      const before = await own.store.auditTrail.estimateEvents(); // 4000, and the control plane's own
      expect(before).toBeGreaterThanOrEqual(4000);
      const maxBytes = Math.floor(used / 2);
      const run = await createAuditRetention({
        store: own.store,
        audit,
        logger: silent,
        config: { maxBytes, intervalMinutes: 60, batchSize: 500, holdForSinks: true },
      }).runOnce();
      // About half the events go (bytes per event as stored), the oldest, and the chain still verifies.
      expect(run?.pruned).toBeGreaterThan(1500);
      expect(run?.pruned).toBeLessThan(2500);
      const left = 4000 - (run?.pruned ?? 0);
      // The estimate follows (+1: the audit.retention event), and the pages freed bring the used size down.
      expect(await own.store.auditTrail.estimateEvents()).toBe(before - (run?.pruned ?? 0) + 1);
      expect((await own.store.auditTrail.usedBytes()) as number).toBeLessThanOrEqual(maxBytes * 1.25);
      expect(await audit.verify(agentRow.id)).toMatchObject({ ok: true, checked: left });
      const recorded = (await own.store.auditEvents.search({ type: "audit.retention" }, 1))[0];
      expect(recorded?.text).toMatch(new RegExp(`^retention \\(${maxBytes} bytes\\) pruned`));
    } finally {
      await own.close();
    }
  });

  it("does nothing without a limit, and runs at start and then on its interval", async () => {
    const none = createAuditRetention({
      store: t.store,
      audit: createAuditService({ store: t.store }),
      logger: silent,
      config: { intervalMinutes: 60, batchSize: 100, holdForSinks: true },
    });
    expect(none.enabled).toBe(false);
    expect(await none.runOnce()).toBeUndefined();
    let runs = 0;
    const store = {
      auditSinks: t.store.auditSinks,
      auditTrail: {
        ...t.store.auditTrail,
        countCutoff: async () => {
          runs++;
          return undefined;
        },
      },
    };
    const job = createAuditRetention({
      store,
      audit: createAuditService({ store: t.store }),
      logger: silent,
      config: { maxEvents: 1_000_000, intervalMinutes: 60, batchSize: 100, holdForSinks: true },
    });
    job.start();
    await new Promise((r) => setTimeout(r, 50));
    expect(runs).toBe(1);
    await job.stop();
  });
});
