/** A raw PostgreSQL protocol client for tests: exact messages in, every backend message out. */
import { connect, type Socket } from "node:net";
import { decodeErrorFields, serialize } from "@moat/pg-wire";
import type { TestPostgres } from "@moat/testkit";
import { readPolicy } from "./bundles.js";
import { startHarness, type Harness } from "./pg.js";

export interface Msg {
  type: string;
  body: Buffer;
}

/** Collects backend messages; waits for conditions on them (the n-th ReadyForQuery, a close). */
export class Raw {
  private buf = Buffer.alloc(0);
  readonly messages: Msg[] = [];
  /** The session's BackendKeyData, once openRaw has it. */
  key: { processId: number; secretKey: number } | undefined;
  private waiters: (() => void)[] = [];
  closed = false;
  constructor(readonly socket: Socket) {
    socket.on("data", (c: Buffer) => {
      this.buf = Buffer.concat([this.buf, c]);
      while (this.buf.length >= 5) {
        const len = this.buf.readInt32BE(1);
        if (this.buf.length < len + 1) break;
        this.messages.push({ type: String.fromCharCode(this.buf[0] as number), body: this.buf.subarray(5, len + 1) });
        this.buf = this.buf.subarray(len + 1);
      }
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on("close", () => {
      this.closed = true;
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on("error", () => undefined);
  }
  async until(pred: (m: Msg[]) => boolean, ms = 5000): Promise<Msg[]> {
    const deadline = Date.now() + ms;
    while (!pred(this.messages)) {
      if (this.closed) return this.messages;
      if (Date.now() > deadline) throw new Error(`timeout; got ${this.messages.map((m) => m.type).join("")}`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 100);
      });
    }
    return this.messages;
  }
  /** Sends and returns the messages received up to the next ReadyForQuery. */
  async exchange(...parts: Buffer[]): Promise<Msg[]> {
    const start = this.messages.length;
    this.socket.write(Buffer.concat(parts));
    await this.until((m) => m.slice(start).some((x) => x.type === "Z"));
    return this.messages.slice(start);
  }
}

/** Sends `parts` in one write; the messages received up to the `answers`-th ReadyForQuery after it. */
export async function pipeline(c: Raw, answers: number, ...parts: Buffer[]): Promise<Msg[]> {
  const start = c.messages.length;
  c.socket.write(Buffer.concat(parts));
  await c.until((m) => m.slice(start).filter((x) => x.type === "Z").length >= answers);
  return c.messages.slice(start);
}

/**
 * A connection to the harness's agent with a startup message as alice@example.com on database app:
 * its answers until the password request (or an error and the close).
 */
export async function startupRaw(harness: Harness): Promise<Raw> {
  const socket = connect(harness.port, "127.0.0.1");
  const raw = new Raw(socket);
  await new Promise((r) => socket.once("connect", r));
  socket.write(serialize.startup({ user: "alice@example.com", database: "app" }));
  await raw.until((m) => m.some((x) => x.type === "R" || x.type === "E"));
  return raw;
}

/** A session through the harness's agent as alice@example.com on database app, past its first ReadyForQuery. */
export async function openRaw(harness: Harness): Promise<Raw> {
  const token = await harness.token();
  const raw = await startupRaw(harness);
  raw.socket.write(serialize.password(token));
  await raw.until((m) => m.some((x) => x.type === "Z"));
  const key = raw.messages.find((m) => m.type === "K")?.body;
  if (key) raw.key = { processId: key.readInt32BE(0), secretKey: key.readInt32BE(4) };
  raw.messages.length = 0;
  return raw;
}

/**
 * Agents in front of the server `pg()` gives (read when they start: test files set it in beforeAll)
 * whose one policy allows reads (and `extra` actions) and masks `email` whole. `withMasked` runs
 * `body` with a raw session through a new one, then closes the socket and the agent (the agent also
 * when `body` fails).
 */
export function maskedAgents(pg: () => TestPostgres) {
  const startMasked = (extra: string[] = []): Promise<Harness> =>
    startHarness({ pg: pg(), policies: [readPolicy(extra, [{ columns: ["email"], style: "full" }])] });
  const withMasked = async (extra: string[], body: (c: Raw, masked: Harness) => Promise<void>): Promise<void> => {
    const masked = await startMasked(extra);
    try {
      const c = await openRaw(masked);
      await body(c, masked);
      c.socket.destroy();
    } finally {
      await masked.close();
    }
  };
  return { startMasked, withMasked };
}

/** A harness's statement events, in order: each event with its query record. */
export const queryEvents = (harness: Harness) =>
  harness
    .events()
    .flatMap((ev) => (ev.type === "db.query" && ev.detail.case === "dbQuery" ? [{ ev, q: ev.detail.value }] : []));

/** The statement events recorded from the `from`-th on: text, message, rows, class. */
export const queryEventsSince = (harness: Harness, from: number) =>
  queryEvents(harness)
    .slice(from)
    .map(({ ev, q }) => ({
      text: q.text,
      message: ev.message,
      rows: Number(q.rows),
      statementClass: q.statementClass,
    }));

/** Runs `body` with a new raw session through the harness, closed after it. */
export async function withRaw<T>(harness: Harness, body: (c: Raw) => Promise<T>): Promise<T> {
  const c = await openRaw(harness);
  try {
    return await body(c);
  } finally {
    c.socket.destroy();
  }
}

export const types = (ms: Msg[]) => ms.map((m) => m.type).join("");
export const errors = (ms: Msg[]) => ms.filter((m) => m.type === "E").map((m) => decodeErrorFields(m.body));
/** The first value of each DataRow, as text. */
export const firstValues = (ms: Msg[]) => ms.filter((m) => m.type === "D").map((m) => m.body.subarray(6).toString());
