/**
 * A direct protobuf encoder for `db.query` audit events, the one event written per statement.
 * protobuf-es's reflective `create` + `toBinary` cost ~100 µs per event on our machines, more than
 * the proxy's whole per-statement budget; this writes the same bytes (fields in number order,
 * proto3 defaults omitted: a test checks byte equality with toBinary) in a few microseconds.
 */
import type { Verdict } from "@moat/proto";

/** Strings up to this length are tried as ASCII in JavaScript (see Writer.string). */
const SHORT = 48;

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
    // Short ASCII strings (ids, rules, classes, tables): copied char by char, cheaper than a call
    // into the native encoder.
    if (s.length <= SHORT) {
      this.ensure(1 + s.length);
      const buf = this.buf;
      let p = this.pos + 1;
      let i = 0;
      for (; i < s.length; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        buf[p++] = c;
      }
      if (i === s.length) {
        buf[this.pos] = s.length;
        this.pos = p;
        return;
      }
    }
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
  /** A bytes field given as a latin1 string (one char per byte, as the spool keeps its hash). */
  latin1(field: number, s: string) {
    if (s.length === 0) return;
    this.tag(field, 2);
    this.varint(s.length);
    this.ensure(s.length);
    const buf = this.buf;
    let p = this.pos;
    for (let i = 0; i < s.length; i++) buf[p++] = s.charCodeAt(i);
    this.pos = p;
  }
  uint64(field: number, v: bigint) {
    if (v === 0n) return;
    this.tag(field, 0);
    this.varint64(v);
  }
  /** A uint64 given as a number (a non-negative safe integer) or a bigint. */
  count(field: number, v: number | bigint) {
    if (typeof v === "bigint") this.uint64(field, v);
    else if (v > Number.MAX_SAFE_INTEGER) this.uint64(field, BigInt(v));
    else if (v !== 0) {
      this.tag(field, 0);
      this.varint(v);
    }
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

/** The fields of a `db.query` event that are the same for every statement of a session. */
export interface QuerySessionFields {
  type: string;
  actor: { user: string; groups: readonly string[]; sourceAddress: string; tokenId: string };
  resource: string;
  sessionId: string;
}

/** The fields of a `db.query` event that change from statement to statement. */
export interface QueryEventFields {
  id: string;
  seq: bigint;
  /** Milliseconds since the epoch. */
  time: number;
  verdict: Verdict;
  rule: string;
  message: string;
  bundleVersion: bigint;
  /** Bytes, or a latin1 string of them (AuditSpool.lastHashLatin1). */
  prevHash: Uint8Array | string;
  query: {
    text: string;
    fingerprint: string;
    statementClass: string;
    tables: readonly string[];
    /** Microseconds (a number: a statement's duration and row count stay far below 2^53). */
    durationUs: number | bigint;
    rows: number | bigint;
    maskedColumns: readonly string[];
  };
}

/**
 * Fields 4 to 7 (type, actor, resource, session id), encoded once per session: they are contiguous
 * in field-number order, so every event of the session copies them as they are.
 */
export function encodeQuerySession(e: QuerySessionFields): Uint8Array {
  const w = outer;
  w.pos = 0;
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
  return Uint8Array.from(w.buf.subarray(0, w.pos));
}

/**
 * Encodes one event: `session` from encodeQuerySession, the rest from `e`. The bytes returned are
 * a view of a buffer the next call overwrites: copy them (the spool does, into its frame) before
 * encoding another event.
 */
export function encodeQueryEvent(session: Uint8Array, e: QueryEventFields): Uint8Array {
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
  w.ensure(session.length);
  w.buf.set(session, w.pos);
  w.pos += session.length;
  if (e.verdict !== 0) {
    w.tag(8, 0);
    w.varint(e.verdict);
  }
  w.string(9, e.rule);
  w.string(10, e.message);
  w.uint64(11, e.bundleVersion);
  if (typeof e.prevHash === "string") w.latin1(12, e.prevHash);
  else w.bytes(12, e.prevHash);
  const q = inner;
  q.pos = 0;
  q.string(1, e.query.text);
  q.string(2, e.query.fingerprint);
  q.string(3, e.query.statementClass);
  for (const tb of e.query.tables) q.string(4, tb, true);
  q.count(5, e.query.durationUs);
  q.count(6, e.query.rows);
  for (const c of e.query.maskedColumns) q.string(7, c, true);
  w.nested(22, q, true);
  return w.buf.subarray(0, w.pos);
}
