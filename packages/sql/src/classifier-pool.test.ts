import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { classifyText } from "./classifier.js";
import { createClassifierPool, POOL_BUSY, type ClassifierPool } from "./classifier-pool.js";
import { loadSqlParser } from "./parser.js";

// The worker as built (npm test builds every package before the tests).
const BUILT_WORKER = new URL("../dist/classify-worker.js", import.meta.url);

/** A stand-in worker for the pool's own mechanics: "die" exits, "wait" never answers, "bad" answers another id. */
const FAKE_WORKER = new URL(
  "data:text/javascript," +
    encodeURIComponent(`
import { parentPort } from "node:worker_threads";
parentPort.on("message", (m) => {
  if (m.text === "die") process.exit(3);
  if (m.text === "throw") setTimeout(() => { throw new Error("boom"); });
  if (m.text.startsWith("wait") || m.text === "throw") return;
  if (m.text === "fail") return parentPort.postMessage({ id: m.id, error: "RangeError" });
  parentPort.postMessage({ id: m.text === "bad" ? m.id + 1 : m.id,
    result: { ok: true, statements: [], fingerprint: m.text + "/" + m.standardConformingStrings, cached: false } });
});`),
);

const scs = { standardConformingStrings: true };
const fingerprint = async (p: Promise<unknown>) => ((await p) as { fingerprint: string }).fingerprint;

let pool: ClassifierPool | undefined;
afterEach(async () => {
  await pool?.close();
  pool = undefined;
});

describe("classifier pool (the built worker)", () => {
  beforeAll(async () => {
    await loadSqlParser();
  });

  it("classifies exactly as classifyText does on this thread, under either lexical state", async () => {
    pool = createClassifierPool({ workerUrl: BUILT_WORKER });
    const values = Array.from({ length: 5000 }, (_, i) => `(${i}, 'user${i}@example.com')`).join(", ");
    const texts = [
      "SELECT email FROM users WHERE id = 1",
      `INSERT INTO users (id, email) VALUES ${values}`,
      `WITH w AS (DELETE FROM users RETURNING *) SELECT * FROM w; SELECT lower(email) FROM users`,
      "SELECT 'a\\' FROM users",
      "SELEC 1",
      `SELECT ${"(".repeat(5000)}1${")".repeat(5000)}`,
      "SET standard_conforming_strings = off; SELECT 1",
      "DO $$ BEGIN EXECUTE 'DROP TABLE users'; END $$",
      "SELECT 1\u0000; DROP TABLE users",
    ];
    for (const text of texts)
      for (const lexical of [scs, { standardConformingStrings: false }])
        expect(await pool.classify(text, lexical)).toEqual(classifyText(text, lexical));
  });

  it("classifies concurrent texts each with its own result, on as many workers as allowed", async () => {
    pool = createClassifierPool({ workerUrl: BUILT_WORKER, workers: 2 });
    const texts = Array.from({ length: 20 }, (_, i) => `SELECT c${i} FROM t${i}`);
    const results = await Promise.all(texts.map((t) => pool!.classify(t, scs)));
    expect(pool.workers).toBeLessThanOrEqual(2);
    results.forEach((r, i) => expect(r.ok && r.statements[0]?.tables).toEqual([{ name: `t${i}` }]));
  });
});

describe("classifier pool (its mechanics, with a stand-in worker)", () => {
  it("answers each text in turn and passes the lexical state", async () => {
    pool = createClassifierPool({ workerUrl: FAKE_WORKER });
    const a = pool.classify("a", scs);
    const b = pool.classify("b", { standardConformingStrings: false });
    expect(pool.pending).toBe(2);
    expect(await fingerprint(a)).toBe("a/true");
    expect(await fingerprint(b)).toBe("b/false");
    expect(pool.pending).toBe(0);
  });

  it("a worker that dies fails only the text it held; the next text gets a new worker", async () => {
    pool = createClassifierPool({ workerUrl: FAKE_WORKER });
    const died = pool.classify("die", scs);
    const next = pool.classify("after", scs);
    await expect(died).rejects.toThrow(/exited \(code 3\)/);
    expect(await fingerprint(next)).toBe("after/true");
  });

  it("an uncaught error in a worker, an error answer or an answer out of turn fail that text only", async () => {
    pool = createClassifierPool({ workerUrl: FAKE_WORKER });
    await expect(pool.classify("throw", scs)).rejects.toThrow(/failed: boom/);
    await expect(pool.classify("fail", scs)).rejects.toThrow("RangeError");
    await expect(pool.classify("bad", scs)).rejects.toThrow(/out of turn/);
    expect(await fingerprint(pool.classify("fine", scs))).toBe("fine/true");
  });

  it("a worker that cannot start fails the text (no exception escapes)", async () => {
    pool = createClassifierPool({ workerUrl: new URL("https://example.invalid/worker.js") });
    await expect(pool.classify("a", scs)).rejects.toThrow(/could not start a classifier worker/);
    expect(pool.pending).toBe(0);
    expect(pool.pendingLength).toBe(0);
  });

  it("idle workers leave; a later text starts one again", async () => {
    pool = createClassifierPool({ workerUrl: FAKE_WORKER, idleMs: 50 });
    await pool.classify("a", scs);
    expect(pool.workers).toBe(1);
    await new Promise((r) => setTimeout(r, 200));
    expect(pool.workers).toBe(0);
    expect(await fingerprint(pool.classify("b", scs))).toBe("b/true");
  });

  it("a caller's abort drops its queued text, or stops the worker parsing it; other texts go on", async () => {
    pool = createClassifierPool({ workerUrl: FAKE_WORKER });
    const running = new AbortController();
    const queued = new AbortController();
    const a = pool.classify("wait", scs, running.signal);
    const b = pool.classify("b", scs, queued.signal);
    const c = pool.classify("c", scs);
    expect(pool.pendingLength).toBe(6);
    queued.abort();
    await expect(b).rejects.toThrow(/cancelled/);
    running.abort();
    await expect(a).rejects.toThrow(/cancelled/);
    expect(await fingerprint(c)).toBe("c/true");
    expect(pool.pending).toBe(0);
    expect(pool.pendingLength).toBe(0);
    const gone = new AbortController();
    gone.abort();
    await expect(pool.classify("d", scs, gone.signal)).rejects.toThrow(/cancelled/);
  });

  it("refuses a text at once (POOL_BUSY) past maxQueuedLength characters waiting, never the first", async () => {
    pool = createClassifierPool({ workerUrl: FAKE_WORKER, maxQueuedLength: 10 });
    const first = pool.classify("wait-longer-than-ten", scs);
    await expect(pool.classify("x", scs)).rejects.toMatchObject({ code: POOL_BUSY });
    const closing = expect(first).rejects.toThrow(/closed/);
    await pool.close();
    await closing;
  });

  it("close rejects what is pending and every later text", async () => {
    pool = createClassifierPool({ workerUrl: FAKE_WORKER });
    const running = expect(pool.classify("wait", scs)).rejects.toThrow(/closed/);
    const queued = expect(pool.classify("queued", scs)).rejects.toThrow(/closed/);
    await pool.close();
    await running;
    await queued;
    await expect(pool.classify("later", scs)).rejects.toThrow(/closed/);
    expect(pool.workers).toBe(0);
  });
});
