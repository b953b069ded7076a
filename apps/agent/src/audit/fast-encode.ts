/**
 * A direct protobuf encoder for `db.query` audit events, the one event written per statement.
 * protobuf-es's reflective `create` + `toBinary` cost ~100 µs per event on our machines, more than
 * the proxy's whole per-statement budget; this writes the same bytes (fields in number order,
 * proto3 defaults omitted: a test checks byte equality with toBinary) in a few microseconds.
 */
import type { Verdict } from "@moat/proto";

export interface DbQueryEvent {
  id: string;
  seq: bigint;
  /** Milliseconds since the epoch. */
  time: number;
  type: string;
  actor: { user: string; groups: readonly string[]; sourceAddress: string; tokenId: string };
  resource: string;
  sessionId: string;
  verdict: Verdict;
  rule: string;
  message: string;
  bundleVersion: bigint;
  prevHash: Uint8Array;
  query: {
    text: string;
    fingerprint: string;
    statementClass: string;
    tables: readonly string[];
    durationUs: bigint;
    rows: bigint;
    maskedColumns: readonly string[];
  };
}

class Writer {
  buf = Buffer.allocUnsafe(1024);
  pos = 0;
  ensure(n: number) {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }
  varint(v: number) {
    this.ensure(10);
    while (v > 0x7f) {
      this.buf[this.pos++] = (v & 0x7f) | 0x80;
      v = Math.floor(v / 128);
    }
    this.buf[this.pos++] = v;
  }
  varint64(v: bigint) {
    if (v >= 0n && v <= MAX_SAFE) {
      this.varint(Number(v));
      return;
    }
    this.ensure(10);
    let x = BigInt.asUintN(64, v);
    while (x > 0x7fn) {
      this.buf[this.pos++] = Number(x & 0x7fn) | 0x80;
      x >>= 7n;
    }
    this.buf[this.pos++] = Number(x);
  }
  tag(field: number, wire: number) {
    this.varint((field << 3) | wire);
  }
  string(field: number, s: string, always = false) {
    if (s.length === 0 && !always) return;
    this.tag(field, 2);
    // ASCII strings (nearly all) are written without measuring them first.
    if (s.length < 128) {
      this.ensure(1 + s.length * 3);
      const at = this.pos++;
      const n = this.buf.write(s, this.pos, "utf8");
      if (n < 128) {
        this.buf[at] = n;
        this.pos += n;
        return;
      }
      this.pos = at;
    }
    const n = Buffer.byteLength(s);
    this.varint(n);
    this.ensure(n);
    this.pos += this.buf.write(s, this.pos, "utf8");
  }
  bytes(field: number, b: Uint8Array) {
    if (b.length === 0) return;
    this.tag(field, 2);
    this.varint(b.length);
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
  uint64(field: number, v: bigint) {
    if (v === 0n) return;
    this.tag(field, 0);
    this.varint64(v);
  }
  /** Appends `inner`'s bytes as a length-prefixed nested message (skipped when empty unless `always`). */
  nested(field: number, inner: Writer, always = false) {
    if (inner.pos === 0 && !always) return;
    this.tag(field, 2);
    this.varint(inner.pos);
    this.ensure(inner.pos);
    inner.buf.copy(this.buf, this.pos, 0, inner.pos);
    this.pos += inner.pos;
  }
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
/** Reused for every event: encoding allocates nothing once the buffers have grown to fit. */
const outer = new Writer();
const inner = new Writer();

/**
 * Encodes one event. The bytes returned are a view of a buffer the next call overwrites: copy them
 * (the spool does, into its frame) before encoding another event.
 */
export function encodeDbQueryEvent(e: DbQueryEvent): Uint8Array {
  const w = outer;
  w.pos = 0;
  w.string(1, e.id);
  w.uint64(2, e.seq);
  const ms = e.time;
  const seconds = Math.floor(ms / 1000);
  const nanos = (ms - seconds * 1000) * 1_000_000;
  const t = inner;
  t.pos = 0;
  if (seconds !== 0) {
    t.tag(1, 0);
    if (seconds > 0) t.varint(seconds);
    else t.varint64(BigInt(seconds));
  }
  if (nanos !== 0) {
    t.tag(2, 0);
    t.varint(nanos);
  }
  w.nested(3, t, true);
  w.string(4, e.type);
  const a = inner;
  a.pos = 0;
  a.string(1, e.actor.user);
  for (const g of e.actor.groups) a.string(2, g, true);
  a.string(3, e.actor.sourceAddress);
  a.string(4, e.actor.tokenId);
  w.nested(5, a, true);
  w.string(6, e.resource);
  w.string(7, e.sessionId);
  if (e.verdict !== 0) {
    w.tag(8, 0);
    w.varint(e.verdict);
  }
  w.string(9, e.rule);
  w.string(10, e.message);
  w.uint64(11, e.bundleVersion);
  w.bytes(12, e.prevHash);
  const q = inner;
  q.pos = 0;
  q.string(1, e.query.text);
  q.string(2, e.query.fingerprint);
  q.string(3, e.query.statementClass);
  for (const tb of e.query.tables) q.string(4, tb, true);
  q.uint64(5, e.query.durationUs);
  q.uint64(6, e.query.rows);
  for (const c of e.query.maskedColumns) q.string(7, c, true);
  w.nested(22, q, true);
  return w.buf.subarray(0, w.pos);
}
