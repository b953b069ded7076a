/**
 * Test support (not built into dist/): audit events as an agent ships them, for feeding a test
 * control plane's ingestion. A minimal protobuf writer for the `AuditEvent` fields the tests use
 * (the CLI does not depend on @moat/proto), hash chained like the agent's spool.
 */
import { createHash, randomBytes } from "node:crypto";

/** A protobuf varint. */
function varint(value: bigint | number): Buffer {
  let v = BigInt(value);
  const out: number[] = [];
  while (v > 0x7fn) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return Buffer.from(out);
}

class Writer {
  private readonly parts: Buffer[] = [];
  varint(field: number, value: bigint | number): this {
    if (BigInt(value) === 0n) return this;
    this.parts.push(varint((field << 3) | 0), varint(value));
    return this;
  }
  bytes(field: number, value: Uint8Array | string): this {
    const data = Buffer.from(value);
    if (data.length === 0) return this;
    this.parts.push(varint((field << 3) | 2), varint(data.length), data);
    return this;
  }
  message(field: number, inner: Writer): this {
    return this.bytes(field, inner.finish());
  }
  finish(): Buffer {
    return Buffer.concat(this.parts);
  }
}

const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/** A ULID-shaped id (26 Crockford base-32 characters), unique enough for tests. */
export function testUlid(): string {
  let id = "";
  for (const b of randomBytes(26)) id += ALPHABET[b % 32];
  return id;
}

export interface TestEvent {
  type: string;
  time: Date;
  user?: string;
  resource?: string;
  sessionId?: string;
  verdict?: "allow" | "deny" | "review";
  /** The statement of a db.query event (its dbQuery detail). */
  text?: string;
  message?: string;
}

const VERDICT = { allow: 1, deny: 2, review: 3 } as const;

/**
 * Encodes `events` as one agent's chain from sequence number `start`, each carrying the SHA-256 of
 * the previous one's bytes (`prev`: the hash before the first). Returns the bytes and the last hash.
 */
export function encodeChain(
  events: TestEvent[],
  start = 1,
  prev: Uint8Array = new Uint8Array(0),
): { batch: Uint8Array[]; last: Uint8Array } {
  const batch: Uint8Array[] = [];
  let previous = prev;
  events.forEach((e, i) => {
    const ms = e.time.getTime();
    const seconds = Math.floor(ms / 1000);
    const w = new Writer()
      .bytes(1, testUlid())
      .varint(2, start + i)
      .message(3, new Writer().varint(1, seconds).varint(2, (ms - seconds * 1000) * 1_000_000))
      .bytes(4, e.type)
      .message(5, new Writer().bytes(1, e.user ?? ""))
      .bytes(6, e.resource ?? "")
      .bytes(7, e.sessionId ?? "")
      .varint(8, e.verdict ? VERDICT[e.verdict] : 0)
      .bytes(10, e.message ?? "")
      .bytes(12, previous);
    if (e.text !== undefined) w.message(22, new Writer().bytes(1, e.text));
    const bytes = w.finish();
    previous = createHash("sha256").update(bytes).digest();
    batch.push(bytes);
  });
  return { batch, last: previous };
}
