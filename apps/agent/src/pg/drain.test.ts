/**
 * Draining at shutdown (`shutdown.drainSeconds`): the listener stops accepting, each session ends
 * (57P01) at its next quiet point — at once when idle, after its running statement, after its
 * transaction's COMMIT — and the ones still busy at the deadline then. Real PostgreSQL, raw clients.
 */
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { serialize } from "@moat/pg-wire";
import { startPostgres, type TestPostgres } from "@moat/testkit";
import { ALLOW_ALL_POLICY } from "../test-support/bundles.js";
import { startHarness } from "../test-support/pg.js";
import { errors, firstValues, openRaw as open, Raw, startupRaw, types } from "../test-support/raw-client.js";

let server: TestPostgres;

beforeAll(async () => {
  server = await startPostgres();
  await server.createDatabase("app");
  await server.sql("CREATE TABLE notes (v text)", "app");
}, 120_000);

afterAll(async () => {
  await server?.stop();
});

const shutDown = (c: Raw) => {
  expect(c.closed).toBe(true);
  expect(errors(c.messages).at(-1)).toMatchObject({
    severity: "FATAL",
    code: "57P01",
    message: "the agent is shutting down",
  });
};

describe("draining sessions at shutdown", () => {
  it("ends idle sessions at once, busy ones after their statement or transaction, and accepts no new ones", async () => {
    const harness = await startHarness({ pg: server, policies: [ALLOW_ALL_POLICY] });
    const idle = await open(harness);
    const inTransaction = await open(harness);
    const running = await open(harness);
    expect(types(await inTransaction.exchange(serialize.query("BEGIN; INSERT INTO notes VALUES ('drained')")))).toBe(
      "CCZ",
    );
    const start = running.messages.length;
    running.socket.write(serialize.query("SELECT pg_sleep(1)::text AS slept, 'done' AS outcome"));
    await new Promise((r) => setTimeout(r, 200));
    const began = Date.now();
    const closed = harness.listener.close({ drainMs: 20_000 });
    await idle.until(() => idle.closed);
    shutDown(idle);
    // Still listening: a new session is told why it cannot start (as PostgreSQL during a shutdown).
    const late = await startupRaw(harness);
    await late.until(() => late.closed);
    expect(errors(late.messages)).toEqual([
      expect.objectContaining({
        severity: "FATAL",
        code: "57P03",
        message: "the agent is shutting down: it accepts no new sessions",
      }),
    ]);
    expect(harness.refusals).toContain("shutting-down");
    // The running statement completes, with its rows, then its session ends.
    await running.until(() => running.closed, 5000);
    expect(types(running.messages.slice(start))).toBe("TDCZE");
    expect(running.messages.find((m) => m.type === "D")?.body.toString()).toContain("done");
    shutDown(running);
    // The open transaction goes on until it ends; its COMMIT is answered, then the session ends.
    expect(inTransaction.closed).toBe(false);
    const read = await inTransaction.exchange(serialize.query("SELECT v FROM notes"));
    expect(firstValues(read)).toEqual(["drained"]);
    expect(inTransaction.closed).toBe(false);
    expect(types(await inTransaction.exchange(serialize.query("COMMIT")))).toMatch(/^CZ(E|$)/);
    await inTransaction.until(() => inTransaction.closed);
    shutDown(inTransaction);
    await closed;
    expect(Date.now() - began).toBeLessThan(10_000);
    expect((await server.sql("SELECT v FROM notes", "app")).trim()).toBe("drained");
    // The session events say why each ended.
    const reasons = harness.events().flatMap((e) => (e.detail.case === "sessionEnd" ? [e.detail.value.reason] : []));
    expect(reasons).toEqual(Array(3).fill("the agent is shutting down"));
    await harness.close();
  });

  it("waits for the Sync of an extended-protocol cycle answered so far: a cursor read in batches, an INSERT (review 65)", async () => {
    const harness = await startHarness({ pg: server, policies: [ALLOW_ALL_POLICY] });
    const batches = await open(harness);
    const insert = await open(harness);
    batches.socket.write(
      Buffer.concat([
        serialize.parse({ text: "SELECT g FROM generate_series(1, 10) g" }),
        serialize.bind({}),
        serialize.execute({ rows: 2 }),
        serialize.flush(),
      ]),
    );
    insert.socket.write(
      Buffer.concat([
        serialize.parse({ text: "INSERT INTO notes VALUES ('unsynced')" }),
        serialize.bind({}),
        serialize.execute({}),
        serialize.flush(),
      ]),
    );
    await batches.until((m) => m.some((x) => x.type === "s"));
    await insert.until((m) => m.some((x) => x.type === "C"));
    const closed = harness.listener.close({ drainMs: 20_000 });
    await new Promise((r) => setTimeout(r, 300));
    // Nothing pending, the last ReadyForQuery idle: still inside the target's implicit transaction.
    expect(batches.closed).toBe(false);
    expect(insert.closed).toBe(false);
    batches.socket.write(Buffer.concat([serialize.execute({ rows: 100 }), serialize.sync()]));
    insert.socket.write(serialize.sync());
    await batches.until(() => batches.closed);
    await insert.until(() => insert.closed);
    expect(types(batches.messages)).toBe("12DDsDDDDDDDDCZE");
    expect(types(insert.messages)).toBe("12CZE");
    shutDown(batches);
    shutDown(insert);
    await closed;
    expect(await server.sql("SELECT count(*) FROM notes WHERE v = 'unsynced'", "app")).toMatch(/^1/);
    await harness.close();
  });

  it("cancels a statement still running when its session is ended: it does not go on and commit (review 65)", async () => {
    await server.sql("CREATE TABLE counter (v int); INSERT INTO counter VALUES (0)", "app");
    const harness = await startHarness({ pg: server, policies: [ALLOW_ALL_POLICY] });
    const c = await open(harness);
    c.socket.write(serialize.query("UPDATE counter SET v = v + 1 WHERE pg_sleep(2) IS NOT NULL"));
    await new Promise((r) => setTimeout(r, 300));
    await harness.listener.close({ drainMs: 300 });
    await c.until(() => c.closed);
    shutDown(c);
    await new Promise((r) => setTimeout(r, 2500));
    expect((await server.sql("SELECT v FROM counter", "app")).trim()).toBe("0");
    await harness.close();
  });

  it("refuses connections still being set up when the stop begins, instead of waiting for their time-out (review 65)", async () => {
    const harness = await startHarness({
      pg: server,
      policies: [ALLOW_ALL_POLICY],
      listener: { setupTimeoutMs: 20_000 },
    });
    const silent = new Raw(connect(harness.port, "127.0.0.1")); // sends nothing
    const started = await startupRaw(harness); // its startup sent, no password yet
    await new Promise((r) => setTimeout(r, 200));
    const began = Date.now();
    await harness.listener.close({ drainMs: 10_000 });
    expect(Date.now() - began).toBeLessThan(3000);
    for (const c of [silent, started]) {
      await c.until(() => c.closed);
      expect(errors(c.messages)).toEqual([expect.objectContaining({ code: "57P03" })]);
    }
    await harness.close();
  });

  it("serves a cancel request for a session it drains", async () => {
    const harness = await startHarness({ pg: server, policies: [ALLOW_ALL_POLICY] });
    const c = await open(harness);
    const { processId, secretKey } = c.key!;
    c.socket.write(serialize.query("SELECT pg_sleep(30)"));
    await new Promise((r) => setTimeout(r, 200));
    const began = Date.now();
    const closed = harness.listener.close({ drainMs: 60_000 });
    const canceller = connect(harness.port, "127.0.0.1");
    await new Promise((r) => canceller.once("connect", r));
    canceller.write(serialize.cancel(processId, secretKey));
    await c.until(() => c.closed, 10_000);
    expect(errors(c.messages).map((e) => e.code)).toEqual(["57014", "57P01"]);
    await closed;
    expect(Date.now() - began).toBeLessThan(10_000);
    canceller.destroy();
    await harness.close();
  });

  it("ends sessions still busy at the deadline, and a second close cuts a drain short", async () => {
    const harness = await startHarness({ pg: server, policies: [ALLOW_ALL_POLICY] });
    const slow = await open(harness);
    slow.socket.write(serialize.query("SELECT pg_sleep(30)"));
    await new Promise((r) => setTimeout(r, 200));
    let began = Date.now();
    await harness.listener.close({ drainMs: 500 });
    expect(Date.now() - began).toBeLessThan(5000);
    await slow.until(() => slow.closed);
    shutDown(slow);

    const other = await startHarness({ pg: server, policies: [ALLOW_ALL_POLICY] });
    const transaction = await open(other);
    await transaction.exchange(serialize.query("BEGIN"));
    began = Date.now();
    const draining = other.listener.close({ drainMs: 60_000 });
    await new Promise((r) => setTimeout(r, 300));
    expect(transaction.closed).toBe(false);
    await other.listener.close();
    await draining;
    expect(Date.now() - began).toBeLessThan(5000);
    await transaction.until(() => transaction.closed);
    shutDown(transaction);
    await harness.close();
    await other.close();
  });
});
