/**
 * Mutated and random client traffic at a live agent in front of a real PostgreSQL (the codec alone
 * is fuzzed in packages/pg-wire): valid message streams of every kind the agent handles, with bytes
 * flipped, lengths and types rewritten, cut, spliced and sent in random pieces, in the startup phase
 * and after it. Whatever a connection sends, what comes back is well-formed protocol (every error
 * with a SQLSTATE), no masked value in clear, nothing written (the user may only read), and a
 * bystander session keeps getting its answers throughout; the agent serves new sessions after.
 * Seeded: MOAT_FUZZ_SEED=<n> replays a run (the seed is in every failure message).
 */
import { connect } from "node:net";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeErrorFields, serialize } from "@moat/pg-wire";
import { startPostgres, type TestPostgres } from "@moat/testkit";
import { readPolicy } from "../test-support/bundles.js";
import { startHarness, type Harness } from "../test-support/pg.js";
import { openRaw, Raw, type Msg } from "../test-support/raw-client.js";

const SEED = Number(process.env.MOAT_FUZZ_SEED ?? Date.now() % 2 ** 31);
const CONNECTIONS = 240;
const AT_ONCE = 8;

/** mulberry32: a small seeded generator, so that a failing run can be replayed. */
function generator(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

let server: TestPostgres;
let h: Harness;
let state = "";
const STATE_SQL =
  "SELECT (SELECT count(*) || '/' || sum(v) FROM canary) || ' ' || (SELECT count(*) FROM t) || ' ' || (SELECT count(*) FROM users)";

beforeAll(async () => {
  server = await startPostgres({ settings: { statement_timeout: "5000" } });
  await server.createDatabase("app");
  await server.sql(
    [
      "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10)",
      "CREATE TABLE canary (v int); INSERT INTO canary VALUES (1), (2), (3)",
      "CREATE TABLE users (id int, email text); INSERT INTO users SELECT i, 'user' || i || '@example.com' FROM generate_series(1, 5) i",
    ].join("; "),
    "app",
  );
  state = (await server.sql(STATE_SQL, "app")).trim();
  h = await startHarness({
    pg: server,
    policies: [
      readPolicy(
        [],
        [
          { columns: ["email"], style: "full" },
          { detectors: ["email"], style: "full" },
        ],
      ),
    ],
    listener: { maxMessageBytes: 1024 * 1024 },
  });
}, 120_000);

afterAll(async () => {
  await h?.close();
  await server?.stop();
});

const TEXTS = [
  "SELECT * FROM t",
  "SELECT id, email FROM users",
  "SELECT lower(email) FROM users WHERE id = $1",
  "SELECT $1::text",
  "DELETE FROM canary",
  "UPDATE canary SET v = 0",
  "INSERT INTO canary VALUES (9)",
  "TRUNCATE canary",
  "DROP TABLE canary",
  "SELECT 1; DELETE FROM canary",
  "BEGIN",
  "COMMIT",
  "ROLLBACK",
  "SAVEPOINT s",
  "ROLLBACK TO s",
  "DECLARE c CURSOR WITH HOLD FOR SELECT email FROM users",
  "FETCH ALL FROM c",
  "CLOSE c",
  "PREPARE p AS SELECT email FROM users",
  "EXECUTE p",
  "DEALLOCATE p",
  "COPY t TO STDOUT",
  "COPY canary FROM STDIN",
  "COPY (SELECT email FROM users) TO STDOUT",
  "SET search_path = public",
  "SET client_encoding = 'SQL_ASCII'",
  "LISTEN x",
  "SELECT pg_notify('x', email) FROM users",
  "SELECT set_config('default_transaction_read_only', 'off', false)",
  "SELECT email::int FROM users",
];

/** One valid frontend message of a random kind. */
function message(rand: () => number): Buffer {
  const pick = <T>(list: readonly T[]): T => list[Math.floor(rand() * list.length)] as T;
  const name = pick(["", "s", "p", "c", "P"]);
  switch (Math.floor(rand() * 12)) {
    case 0:
    case 1:
      return serialize.query(pick(TEXTS));
    case 2:
      return serialize.parse({ name, text: pick(TEXTS), types: rand() < 0.3 ? [25] : [] });
    case 3:
      return serialize.bind({
        portal: pick(["", "P", "c"]),
        statement: name,
        values: rand() < 0.5 ? [] : [pick(["1", "x", null])],
        binary: rand() < 0.3,
      });
    case 4:
      return serialize.describe({ type: pick(["S", "P"]), name });
    case 5:
      return serialize.execute({ portal: pick(["", "P", "c"]), rows: rand() < 0.5 ? 0 : 1 });
    case 6:
    case 7:
      return serialize.sync();
    case 8:
      return serialize.flush();
    case 9:
      return serialize.close({ type: pick(["S", "P"]), name });
    case 10:
      return pick([serialize.copyData(Buffer.from("7\n")), serialize.copyDone(), serialize.copyFail("no")]);
    default:
      return serialize.end();
  }
}

/** The stream, damaged one of several ways (or left whole: valid streams matter too). */
function mutate(stream: Buffer, rand: () => number): Buffer {
  const b = Buffer.from(stream);
  const at = () => Math.floor(rand() * b.length);
  switch (Math.floor(rand() * 7)) {
    case 0: // flip bytes
      for (let i = 0, n = 1 + Math.floor(rand() * 4); i < n; i++) {
        const j = at();
        b[j] = (b[j] as number) ^ (1 << Math.floor(rand() * 8));
      }
      return b;
    case 1: {
      // a length field rewritten: negative, tiny, huge, or off by a little
      const i = Math.min(at(), Math.max(0, b.length - 4));
      const value = [-1, 0, 3, 4, 5, 0x7fffffff, 2 * 1024 * 1024, b.readInt32BE(i) + 1][
        Math.floor(rand() * 8)
      ] as number;
      if (b.length >= 4) b.writeInt32BE(value | 0, i);
      return b;
    }
    case 2: // cut
      return b.subarray(0, at());
    case 3: // random bytes spliced in
      return Buffer.concat([b.subarray(0, at()), randomBytes(rand, 1 + Math.floor(rand() * 40)), b.subarray(at())]);
    case 4: // a message type replaced
      b[at()] = Math.floor(rand() * 256);
      return b;
    case 5: // random bytes only
      return randomBytes(rand, 1 + Math.floor(rand() * 200));
    default:
      return b;
  }
}

function randomBytes(rand: () => number, n: number): Buffer {
  return Buffer.from(Array.from({ length: n }, () => Math.floor(rand() * 256)));
}

const BACKEND_TYPES = new Set("RSKZTDCEINn123stAGHdcWVv".split(""));

/** What any answer must be: known message types, errors with a SQLSTATE, no email in clear. */
function checkAnswer(messages: Msg[], context: string): void {
  for (const m of messages) {
    expect(BACKEND_TYPES.has(m.type), `${context}: message type ${JSON.stringify(m.type)}`).toBe(true);
    if (m.type === "E" || m.type === "N") {
      const e = decodeErrorFields(m.body);
      if (m.type === "E") expect(e.code, `${context}: error without a SQLSTATE: ${e.message}`).toMatch(/^[0-9A-Z]{5}$/);
    }
    expect(m.body.toString("latin1"), `${context}: an email in clear`).not.toMatch(/user\d@example\.com/);
  }
}

/** Writes `bytes` in random pieces, a turn apart, then waits until the agent closes or goes quiet. */
async function send(raw: Raw, bytes: Buffer, rand: () => number): Promise<void> {
  let at = 0;
  while (at < bytes.length && !raw.closed) {
    const n = 1 + Math.floor(rand() * (bytes.length - at));
    raw.socket.write(bytes.subarray(at, at + n));
    at += n;
    await new Promise((r) => setImmediate(r));
  }
  let seen = -1;
  for (let waited = 0; !raw.closed && seen !== raw.messages.length && waited < 3000; waited += 150) {
    seen = raw.messages.length;
    await new Promise((r) => setTimeout(r, 150));
  }
}

describe("fuzzed client traffic at a live agent", () => {
  it("answers in protocol, leaks nothing, writes nothing, and other sessions go on", async () => {
    const rand = generator(SEED);
    const context = `seed ${SEED}`;
    // A bystander that keeps asking throughout.
    const bystander = new pg.Client({
      host: "127.0.0.1",
      port: h.port,
      user: "alice@example.com",
      password: await h.token(),
      database: "app",
    });
    await bystander.connect();
    let stop = false;
    let answered = 0;
    const watching = (async () => {
      while (!stop) {
        const r = await bystander.query("SELECT count(*)::int AS n, max(email) AS e FROM t, users");
        expect(r.rows[0]).toEqual({ n: 50, e: "****" });
        answered++;
      }
    })();
    let done = 0;
    const one = async (k: number) => {
      const startup = k % 5 === 0; // a fifth damage the startup phase instead
      if (startup) {
        const socket = connect(h.port, "127.0.0.1");
        const raw = new Raw(socket);
        await new Promise((r) => socket.once("connect", r));
        const valid = Buffer.concat([
          serialize.startup({ user: "alice@example.com", database: "app" }),
          serialize.password(await h.token()),
          serialize.query("SELECT email FROM users"),
        ]);
        await send(raw, mutate(valid, rand), rand);
        checkAnswer(raw.messages, `${context}, connection ${k} (startup)`);
        socket.destroy();
      } else {
        const raw = await openRaw(h);
        const stream = Buffer.concat(Array.from({ length: 1 + Math.floor(rand() * 10) }, () => message(rand)));
        await send(raw, mutate(stream, rand), rand);
        checkAnswer(raw.messages, `${context}, connection ${k}`);
        raw.socket.destroy();
      }
      done++;
    };
    const queue = Array.from({ length: CONNECTIONS }, (_, k) => k);
    await Promise.all(
      Array.from({ length: AT_ONCE }, async () => {
        for (let k = queue.shift(); k !== undefined; k = queue.shift()) await one(k);
      }),
    );
    stop = true;
    await watching;
    await bystander.end();
    expect(done).toBe(CONNECTIONS);
    expect(answered, context).toBeGreaterThan(10);
    // Nothing changed, and a new session is served as usual.
    expect((await server.sql(STATE_SQL, "app")).trim(), context).toBe(state);
    const after = await openRaw(h);
    const ms = await after.exchange(serialize.query("SELECT email FROM users WHERE id = 1"));
    expect(ms.map((m) => m.type).join(""), context).toBe("TDCZ");
    checkAnswer(ms, context);
    after.socket.destroy();
  }, 240_000);
});
