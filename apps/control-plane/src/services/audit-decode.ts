/**
 * A direct reader of the `AuditEvent` fields the control plane stores and searches on (id, seq,
 * time, type, user, resource, session, verdict, rule, message, bundle version, previous hash, and
 * the statement text or command). protobuf-es's reflective `fromBinary` costs several microseconds
 * per event, a large share of the ingestion budget at tens of thousands of events a second; this
 * walks the bytes once and validates the whole message's wire structure, nested messages included.
 *
 * It only takes the common path: anything unusual (a field repeated where protobuf would merge or
 * override, a wire type the schema does not declare, groups) returns `undefined`, and the caller
 * decodes with protobuf-es instead, so the outcome is always what protobuf-es would give. Pure: no
 * I/O. Tests check it against protobuf-es on generated and corrupted events.
 */
import { isUtf8 } from "node:buffer";

/** The decoded fields; strings exactly as protobuf-es would give them (not truncated here). */
export interface DecodedAuditFields {
  id: string;
  seq: bigint;
  /** Epoch milliseconds, as `timestampMs` computes them; 0 when the event has no time. */
  timeMs: number;
  type: string;
  user: string;
  resource: string;
  sessionId: string;
  verdict: number;
  rule: string;
  message: string;
  bundleVersion: bigint;
  prevHash: Uint8Array;
  /** Which `detail` the event carries ("" for none), and its text: a query's text or a command. */
  detailCase: "" | "sessionStart" | "sessionEnd" | "dbQuery" | "sshExec" | "auditGap" | "bundleApplied";
  detailText: string;
}

const enum Wire {
  varint = 0,
  fixed64 = 1,
  bytes = 2,
  fixed32 = 5,
}

/** A message's fields by number: their wire type, and the nested message's fields for messages. */
interface Fields {
  [field: number]: { wire: Wire; message?: Fields; utf8?: true };
}

// proto3 strings must be valid UTF-8: protobuf-es refuses them otherwise, and so must this reader.
const str = { wire: Wire.bytes, utf8: true } as const;
const num = { wire: Wire.varint } as const;
const TIMESTAMP: Fields = { 1: num, 2: num };
const ACTOR: Fields = { 1: str, 2: str, 3: str, 4: str };
const SESSION_START: Fields = { 1: str, 2: str, 3: str, 4: str };
const SESSION_END: Fields = { 1: str, 2: num };
const DB_QUERY: Fields = { 1: str, 2: str, 3: str, 4: str, 5: num, 6: num, 7: str };
const SSH_EXEC: Fields = { 1: str, 2: num };
const AUDIT_GAP: Fields = { 1: num, 2: num, 3: str };
const BUNDLE_APPLIED: Fields = { 1: num, 2: num, 3: str };

const DETAILS: Record<number, [DecodedAuditFields["detailCase"], Fields]> = {
  20: ["sessionStart", SESSION_START],
  21: ["sessionEnd", SESSION_END],
  22: ["dbQuery", DB_QUERY],
  23: ["sshExec", SSH_EXEC],
  24: ["auditGap", AUDIT_GAP],
  25: ["bundleApplied", BUNDLE_APPLIED],
};

const EVENT: Fields = {
  1: str,
  2: num,
  3: { wire: Wire.bytes, message: TIMESTAMP },
  4: str,
  5: { wire: Wire.bytes, message: ACTOR },
  6: str,
  7: str,
  8: num,
  9: str,
  10: str,
  11: num,
  12: { wire: Wire.bytes },
  ...Object.fromEntries(Object.entries(DETAILS).map(([n, [, fields]]) => [n, { wire: Wire.bytes, message: fields }])),
};

/** Thrown inside the reader for anything off the common path; never escapes `decodeAuditFields`. */
class OffPath extends Error {}
const offPath = new OffPath();

class Reader {
  pos: number;
  constructor(
    readonly buf: Buffer,
    start: number,
  ) {
    this.pos = start;
  }

  /** A varint as a BigInt (up to 64 bits; a longer or truncated one is off the path). */
  varint64(end: number): bigint {
    // Up to 7 bytes (49 bits) in plain numbers, the common case, then BigInt for the rest.
    let low = 0;
    let shift = 1;
    for (let i = 0; i < 7; i++) {
      if (this.pos >= end) throw offPath;
      const b = this.buf[this.pos++] as number;
      low += (b & 0x7f) * shift;
      if (b < 0x80) return BigInt(low);
      shift *= 128;
    }
    let value = BigInt(low);
    let bits = 49n;
    for (let i = 7; i < 10; i++) {
      if (this.pos >= end) throw offPath;
      const b = this.buf[this.pos++] as number;
      value |= BigInt(b & 0x7f) << bits;
      if (b < 0x80) return BigInt.asUintN(64, value);
      bits += 7n;
    }
    throw offPath;
  }

  /** A varint that must fit in 32 bits of length (tags and lengths). */
  varint32(end: number): number {
    let value = 0;
    let shift = 1;
    for (let i = 0; i < 5; i++) {
      if (this.pos >= end) throw offPath;
      const b = this.buf[this.pos++] as number;
      value += (b & 0x7f) * shift;
      if (b < 0x80) {
        if (value > 0xffffffff) throw offPath;
        return value;
      }
      shift *= 128;
    }
    throw offPath;
  }

  /** The bounds of a length-delimited field's payload; advances past it. */
  delimited(end: number): [number, number] {
    const length = this.varint32(end);
    const start = this.pos;
    if (length > end - start) throw offPath;
    this.pos = start + length;
    return [start, this.pos];
  }

  skip(wire: number, end: number): void {
    switch (wire) {
      case Wire.varint:
        for (let i = 0; ; i++) {
          if (i === 10 || this.pos >= end) throw offPath;
          if ((this.buf[this.pos++] as number) < 0x80) return;
        }
      case Wire.fixed64:
        if (end - this.pos < 8) throw offPath;
        this.pos += 8;
        return;
      case Wire.bytes:
        this.delimited(end);
        return;
      case Wire.fixed32:
        if (end - this.pos < 4) throw offPath;
        this.pos += 4;
        return;
      default:
        throw offPath; // groups (deprecated) and invalid wire types
    }
  }

  /** Validates a nested message's wire structure against its fields; returns nothing. */
  validate(start: number, end: number, fields: Fields): void {
    const saved = this.pos;
    this.pos = start;
    let seen: Set<number> | undefined;
    while (this.pos < end) {
      const tag = this.varint32(end);
      const field = tag >>> 3;
      const wire = tag & 7;
      if (field === 0) throw offPath;
      const known = fields[field];
      if (known && known.wire !== wire) throw offPath;
      // Repeated strings (groups, tables, masked columns) are fine; a repeated nested message would merge.
      if (known?.message) {
        seen ??= new Set();
        if (seen.has(field)) throw offPath;
        seen.add(field);
        const [s, e] = this.delimited(end);
        this.validate(s, e, known.message);
      } else if (known?.utf8) {
        const [s, e] = this.delimited(end);
        if (!validUtf8(this.buf, s, e)) throw offPath;
      } else this.skip(wire, end);
    }
    if (this.pos !== end) throw offPath;
    this.pos = saved;
  }
}

/** Whether bytes [start, end) are valid UTF-8: a plain loop for ASCII (nearly every string), else Node's check. */
function validUtf8(buf: Buffer, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if ((buf[i] as number) >= 0x80) return isUtf8(buf.subarray(start, end));
  return true;
}

/** Buffer's own UTF-8 slice, without `toString`'s argument handling (a measurable share per event). */
const utf8 = (buf: Buffer, start: number, end: number): string =>
  (buf as unknown as { utf8Slice(start: number, end: number): string }).utf8Slice(start, end);

/** Reads the first occurrence of string field `wanted` in a (validated) nested message. */
function nestedString(buf: Buffer, start: number, end: number, wanted: number): string {
  const r = new Reader(buf, start);
  let value = "";
  while (r.pos < end) {
    const tag = r.varint32(end);
    if (tag >>> 3 === wanted && (tag & 7) === Wire.bytes) {
      const [s, e] = r.delimited(end);
      // proto3 singular string: the last occurrence wins.
      value = utf8(buf, s, e);
    } else r.skip(tag & 7, end);
  }
  return value;
}

/**
 * Decodes the stored fields of one `AuditEvent`, or returns `undefined` when the bytes are off the
 * common path (malformed, or legal but unusual): decode those with protobuf-es.
 */
export function decodeAuditFields(bytes: Uint8Array): DecodedAuditFields | undefined {
  const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = buf.length;
  const r = new Reader(buf, 0);
  const out: DecodedAuditFields = {
    id: "",
    seq: 0n,
    timeMs: 0,
    type: "",
    user: "",
    resource: "",
    sessionId: "",
    verdict: 0,
    rule: "",
    message: "",
    bundleVersion: 0n,
    prevHash: new Uint8Array(0),
    detailCase: "",
    detailText: "",
  };
  let seen = 0; // a bit per top-level field number (all below 31)
  try {
    while (r.pos < end) {
      const tag = r.varint32(end);
      const field = tag >>> 3;
      const wire = tag & 7;
      if (field === 0) return undefined;
      const known = EVENT[field];
      if (!known) {
        r.skip(wire, end); // an unknown field (a newer agent): kept in the stored bytes, not searched on
        continue;
      }
      if (known.wire !== wire || seen & (1 << field)) return undefined;
      seen |= 1 << field;
      if (wire === Wire.varint) {
        const value = r.varint64(end);
        if (field === 2) out.seq = value;
        else if (field === 8) out.verdict = Number(BigInt.asIntN(32, value));
        else if (field === 11) out.bundleVersion = value;
        continue;
      }
      const [s, e] = r.delimited(end);
      if (known.utf8 && !validUtf8(buf, s, e)) return undefined;
      switch (field) {
        case 1:
          out.id = utf8(buf, s, e);
          break;
        case 3: {
          r.validate(s, e, TIMESTAMP);
          const t = new Reader(buf, s);
          let seconds = 0n;
          let nanos = 0;
          while (t.pos < e) {
            const tt = t.varint32(e);
            if ((tt & 7) !== Wire.varint) {
              t.skip(tt & 7, e);
              continue;
            }
            const v = t.varint64(e);
            if (tt >>> 3 === 1) seconds = BigInt.asIntN(64, v);
            else if (tt >>> 3 === 2) nanos = Number(BigInt.asIntN(32, v));
          }
          out.timeMs = Number(seconds) * 1000 + Math.round(nanos / 1000000);
          break;
        }
        case 4:
          out.type = utf8(buf, s, e);
          break;
        case 5:
          r.validate(s, e, ACTOR);
          out.user = nestedString(buf, s, e, 1);
          break;
        case 6:
          out.resource = utf8(buf, s, e);
          break;
        case 7:
          out.sessionId = utf8(buf, s, e);
          break;
        case 9:
          out.rule = utf8(buf, s, e);
          break;
        case 10:
          out.message = utf8(buf, s, e);
          break;
        case 12:
          out.prevHash = buf.subarray(s, e);
          break;
        default: {
          const detail = DETAILS[field];
          if (!detail) return undefined;
          // A second `detail` (another case of the oneof) would replace the first: off the path.
          if (out.detailCase !== "") return undefined;
          r.validate(s, e, detail[1]);
          out.detailCase = detail[0];
          if (field === 22 || field === 23) out.detailText = nestedString(buf, s, e, 1);
        }
      }
    }
  } catch (error) {
    if (error === offPath) return undefined;
    throw error;
  }
  return out;
}
