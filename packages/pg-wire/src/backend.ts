/**
 * Backend messages (server -> client): a streaming relay scanner that finds message boundaries in
 * what a target sends without copying what it forwards unchanged, decoders for the few messages the
 * agent inspects, and encoders for the messages the agent answers with itself.
 */
import { BodyReader, ProtocolError } from "./frontend.js";

const EMPTY = Buffer.alloc(0);

/**
 * Returned by `RelayHandler.message` to stop the relay at that message: it and everything after it
 * are kept (nothing is forwarded or lost) until `RelayScanner.resume()`, which delivers the same
 * message again. For work the relay must wait for, e.g. looking up a result's columns.
 */
export const HOLD: unique symbol = Symbol("hold");

/** What the relay does with each server message. */
export interface RelayHandler {
  /**
   * Whether a message of this type may be forwarded before it is whole (nothing to inspect or
   * rewrite in it: DataRow without masking, CopyData). Keeps large rows out of memory.
   */
  streamable(type: number): boolean;
  /**
   * A whole message (`raw` includes the 5-byte header). Return undefined to forward it unchanged,
   * or the buffers to send instead of it (empty to drop it), or HOLD to stop before it.
   */
  message(type: number, raw: Buffer): Buffer[] | undefined | typeof HOLD;
  /** A message started being streamed through (`streamable` said yes and it was not whole). */
  streamed?(type: number): void;
  /** Bytes to forward, in order. */
  forward(bytes: Buffer): void;
}

/**
 * Incremental scanner over a server's byte stream. Runs of unchanged messages are forwarded as
 * slices of the received chunk; only rewritten messages cost allocations.
 */
export class RelayScanner {
  private pending: Buffer = EMPTY;
  private parts: Buffer[] = [];
  private partBytes = 0;
  private wanted = 0;
  /** Bytes still to pass through of a message being streamed. */
  private passthrough = 0;
  /** Stopped by HOLD: `pending` starts with the held message. */
  private held = false;

  constructor(
    private readonly handler: RelayHandler,
    private readonly maxMessageBytes: number,
  ) {}

  /** Whether the relay is stopped by HOLD (what arrives meanwhile is kept, in order). */
  get isHeld(): boolean {
    return this.held;
  }

  /** Part of a message was forwarded and the rest has not come (a streamed DataRow cut short). */
  get midMessage(): boolean {
    return this.passthrough > 0;
  }

  /** Continues after HOLD, starting with the held message. */
  resume(): void {
    if (!this.held) return;
    this.held = false;
    const rest = this.pending;
    this.pending = EMPTY;
    if (rest.length > 0) this.push(rest);
  }

  push(chunk: Buffer): void {
    try {
      this.scan(chunk);
    } finally {
      this.flush();
    }
  }

  /**
   * What one push forwards, in order. Unchanged runs are slices of the chunk; when messages were
   * rewritten, the pieces are joined into one buffer (one copy of the chunk) rather than handed on
   * one by one: a masked result rewrites every row, and a write per row costs far more than a copy.
   */
  private out: Buffer[] = [];
  private outBytes = 0;

  private emit(bytes: Buffer): void {
    if (bytes.length === 0) return;
    this.out.push(bytes);
    this.outBytes += bytes.length;
  }

  private flush(): void {
    const { out } = this;
    if (out.length === 0) return;
    const bytes = out.length === 1 ? out[0]! : Buffer.concat(out, this.outBytes);
    this.out = [];
    this.outBytes = 0;
    this.handler.forward(bytes);
  }

  private scan(chunk: Buffer): void {
    if (this.held) {
      this.pending = Buffer.concat([this.pending, chunk]);
      return;
    }
    let buf: Buffer;
    if (this.parts.length > 0) {
      this.parts.push(chunk);
      this.partBytes += chunk.length;
      if (this.partBytes < this.wanted) return;
      buf = Buffer.concat(this.parts, this.partBytes);
      this.parts = [];
      this.partBytes = 0;
    } else buf = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    this.pending = EMPTY;
    const h = this.handler;
    let pos = 0;
    let runStart = 0;
    if (this.passthrough > 0) {
      pos = Math.min(this.passthrough, buf.length);
      this.passthrough -= pos;
    }
    while (buf.length - pos >= 5) {
      const type = buf[pos] as number;
      const length = buf.readInt32BE(pos + 1);
      if (length < 4) throw new ProtocolError(`the server sent an invalid message length ${length}`);
      const end = pos + length + 1;
      if (end <= buf.length) {
        const replacement = h.message(type, buf.subarray(pos, end));
        if (replacement === HOLD) {
          if (pos > runStart) this.emit(buf.subarray(runStart, pos));
          this.pending = buf.subarray(pos);
          this.held = true;
          return;
        }
        if (replacement !== undefined) {
          if (pos > runStart) this.emit(buf.subarray(runStart, pos));
          for (const r of replacement) this.emit(r);
          runStart = end;
        }
        pos = end;
        continue;
      }
      if (h.streamable(type)) {
        h.streamed?.(type);
        this.passthrough = end - buf.length;
        pos = buf.length;
        break;
      }
      if (length + 1 > this.maxMessageBytes)
        throw new ProtocolError(
          `the server sent a message of ${length + 1} bytes, over this proxy's limit of ${this.maxMessageBytes}`,
          "54000",
        );
      if (buf.length - pos >= 64 * 1024) {
        if (pos > runStart) this.emit(buf.subarray(runStart, pos));
        this.parts = [buf.subarray(pos)];
        this.partBytes = buf.length - pos;
        this.wanted = length + 1;
        return;
      }
      break;
    }
    // The usual answer (every message of the chunk passed unchanged) is forwarded as the chunk.
    if (runStart === 0 && pos === buf.length) this.emit(buf);
    else if (pos > runStart) this.emit(buf.subarray(runStart, pos));
    if (pos < buf.length) this.pending = buf.subarray(pos);
  }
}

// ---------------------------------------------------------------------------------------------
// Decoders

export interface ErrorFields {
  severity: string;
  code: string;
  message: string;
  [field: string]: string;
}

const FIELD_NAMES: Record<string, string> = {
  S: "severity",
  V: "severityNonLocalized",
  C: "code",
  M: "message",
  D: "detail",
  H: "hint",
  P: "position",
  p: "internalPosition",
  q: "internalQuery",
  W: "where",
  s: "schema",
  t: "table",
  c: "column",
  d: "dataType",
  n: "constraint",
  F: "file",
  L: "line",
  R: "routine",
};

/** ErrorResponse / NoticeResponse body. */
export function decodeErrorFields(body: Buffer): ErrorFields {
  const out: ErrorFields = { severity: "", code: "", message: "" };
  const r = new BodyReader(body);
  for (;;) {
    const t = r.byte();
    if (t === 0) break;
    const key = String.fromCharCode(t);
    out[FIELD_NAMES[key] ?? key] = r.cstring();
  }
  return out;
}

export interface RowField {
  name: string;
  tableOid: number;
  columnNumber: number;
  typeOid: number;
  typeSize: number;
  typeModifier: number;
  format: number;
}

export function decodeRowDescription(body: Buffer): RowField[] {
  const r = new BodyReader(body);
  const n = r.int16();
  const fields: RowField[] = [];
  for (let i = 0; i < n; i++) {
    fields.push({
      name: r.cstring(),
      tableOid: r.int32() >>> 0,
      columnNumber: r.int16(),
      typeOid: r.int32() >>> 0,
      typeSize: r.int16(),
      typeModifier: r.int32(),
      format: r.int16(),
    });
  }
  return fields;
}

/** DataRow values as slices of `body` (no copy); null for SQL NULL. */
export function decodeDataRow(body: Buffer): (Buffer | null)[] {
  const r = new BodyReader(body);
  const n = r.int16();
  if (n < 0) throw new ProtocolError("malformed DataRow");
  const values: (Buffer | null)[] = new Array<Buffer | null>(n);
  for (let i = 0; i < n; i++) {
    const len = r.int32();
    values[i] = len < 0 ? null : r.bytes(len);
  }
  return values;
}

/**
 * A DataRow message (`raw`: type byte, length, body) with some values replaced, without decoding
 * the others: `replace(i, value)` is called for each non-NULL value whose `wanted(i)` is true and
 * returns that value itself (unchanged), new bytes, or null (SQL NULL). Returns undefined when
 * nothing changed (relay `raw` as it is). Malformed rows throw ProtocolError, as decodeDataRow.
 */
export function replaceDataRowValues(
  raw: Buffer,
  wanted: (i: number) => boolean,
  replace: (i: number, value: Buffer) => Buffer | null,
): Buffer | undefined {
  if (raw.length < 7) throw new ProtocolError("malformed DataRow");
  const n = raw.readInt16BE(5);
  if (n < 0) throw new ProtocolError("malformed DataRow");
  let pos = 7;
  // Replaced values as (index, old start, old end, new value) runs, in order.
  let changes: (Buffer | null | number)[] | undefined;
  let delta = 0;
  for (let i = 0; i < n; i++) {
    if (pos + 4 > raw.length) throw new ProtocolError("malformed message: truncated");
    const len = raw.readInt32BE(pos);
    pos += 4;
    if (len === -1) continue; // NULL
    if (len < 0) throw new ProtocolError("malformed DataRow: negative value length");
    if (pos + len > raw.length) throw new ProtocolError("malformed message: truncated");
    if (wanted(i)) {
      const value = raw.subarray(pos, pos + len);
      const next = replace(i, value);
      if (next !== value) {
        (changes ??= []).push(pos - 4, pos + len, next);
        delta += (next === null ? 0 : next.length) - len;
      }
    }
    pos += len;
  }
  if (pos !== raw.length) throw new ProtocolError("malformed DataRow: trailing bytes");
  if (changes === undefined) return undefined;
  const out = Buffer.allocUnsafe(raw.length + delta);
  let from = 0;
  let at = 0;
  for (let c = 0; c < changes.length; c += 3) {
    const start = changes[c] as number;
    const next = changes[c + 2] as Buffer | null;
    at = copyRange(out, at, raw, from, start);
    at = out.writeInt32BE(next === null ? -1 : next.length, at);
    if (next !== null) at = copyRange(out, at, next, 0, next.length);
    from = changes[c + 1] as number;
  }
  copyRange(out, at, raw, from, raw.length);
  out.writeInt32BE(out.length - 1, 1);
  return out;
}

/** Copies `src[from..to)` into `dst` at `at`; returns the offset after it. Short ranges by a loop
 * (rows are often a few dozen bytes, where Buffer#copy's argument checks cost more than the copy). */
function copyRange(dst: Buffer, at: number, src: Buffer, from: number, to: number): number {
  if (to - from > 64) return at + src.copy(dst, at, from, to);
  for (let i = from; i < to; i++) dst[at++] = src[i]!;
  return at;
}

/** CommandComplete tag ("SELECT 5", "INSERT 0 1") and its row count when it has one. */
export function decodeCommandComplete(body: Buffer): { tag: string; rows: number | undefined } {
  const tag = new BodyReader(body).cstring();
  const last = tag.lastIndexOf(" ");
  const n = last >= 0 ? Number(tag.slice(last + 1)) : NaN;
  return { tag, rows: Number.isInteger(n) ? n : undefined };
}

/**
 * The row count of a whole CommandComplete message, read from its bytes without decoding the tag
 * (once per statement on the relay's path): its last word when that is all decimal digits, as
 * PostgreSQL writes counts. Other number forms (`-5`, `1e3`), which `decodeCommandComplete` reads
 * with `Number`, give undefined.
 */
export function commandCompleteRows(message: Buffer): number | undefined {
  // 'C', int32 length, the tag, NUL. The count is the tag's last word when that is all digits.
  // Anything unusual (no NUL at the end, one before it, an empty last word) takes the full decoder.
  if (message.indexOf(0, 5) !== message.length - 1 || message[message.length - 2] === 0x20)
    return decodeCommandComplete(message.subarray(5)).rows;
  let i = message.length - 2;
  let rows = 0;
  let scale = 1;
  for (; i >= 5; i--) {
    const c = message[i] as number;
    if (c === 0x20) return rows;
    if (c < 0x30 || c > 0x39) return undefined;
    rows += (c - 0x30) * scale;
    scale *= 10;
  }
  return undefined;
}

export function decodeParameterStatus(body: Buffer): { name: string; value: string } {
  const r = new BodyReader(body);
  return { name: r.cstring(), value: r.cstring() };
}

export function decodeBackendKeyData(body: Buffer): { processId: number; secretKey: number } {
  const r = new BodyReader(body);
  return { processId: r.int32(), secretKey: r.int32() };
}

export type AuthenticationRequest =
  | { kind: "ok" }
  | { kind: "cleartext" }
  | { kind: "md5"; salt: Buffer }
  | { kind: "sasl"; mechanisms: string[] }
  | { kind: "sasl-continue"; data: string }
  | { kind: "sasl-final"; data: string }
  | { kind: "unsupported"; code: number };

export function decodeAuthentication(body: Buffer): AuthenticationRequest {
  const r = new BodyReader(body);
  const code = r.int32();
  switch (code) {
    case 0:
      return { kind: "ok" };
    case 3:
      return { kind: "cleartext" };
    case 5:
      return { kind: "md5", salt: Buffer.from(r.bytes(4)) };
    case 10: {
      const mechanisms: string[] = [];
      for (;;) {
        const m = r.cstring();
        if (m === "") break;
        mechanisms.push(m);
      }
      return { kind: "sasl", mechanisms };
    }
    case 11:
      return { kind: "sasl-continue", data: r.bytes(r.remaining).toString("utf8") };
    case 12:
      return { kind: "sasl-final", data: r.bytes(r.remaining).toString("utf8") };
    default:
      return { kind: "unsupported", code };
  }
}

// ---------------------------------------------------------------------------------------------
// Encoders

function message(type: string, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(body.length + 5);
  out[0] = type.charCodeAt(0);
  out.writeInt32BE(body.length + 4, 1);
  body.copy(out, 5);
  return out;
}

function cstr(s: string): Buffer {
  return Buffer.from(`${s}\0`, "utf8");
}

export interface ErrorInit {
  severity?: "ERROR" | "FATAL" | "PANIC" | "WARNING" | "NOTICE" | "INFO" | "LOG";
  code: string;
  message: string;
  detail?: string;
  hint?: string;
  /** 1-based character position in the query text (psql shows its line and a caret under it). */
  position?: number;
}

function fields(e: ErrorInit): Buffer {
  const severity = e.severity ?? "ERROR";
  const parts: Buffer[] = [
    Buffer.from("S"),
    cstr(severity),
    Buffer.from("V"),
    cstr(severity),
    Buffer.from("C"),
    cstr(e.code),
    Buffer.from("M"),
    cstr(e.message),
  ];
  if (e.detail) parts.push(Buffer.from("D"), cstr(e.detail));
  if (e.hint) parts.push(Buffer.from("H"), cstr(e.hint));
  if (e.position !== undefined && e.position > 0) parts.push(Buffer.from("P"), cstr(String(e.position)));
  parts.push(Buffer.from([0]));
  return Buffer.concat(parts);
}

export function errorResponse(e: ErrorInit): Buffer {
  return message("E", fields(e));
}

export function noticeResponse(e: ErrorInit): Buffer {
  return message("N", fields({ severity: "NOTICE", ...e }));
}

export function authenticationRequest(code: number, extra: Buffer = EMPTY): Buffer {
  const body = Buffer.allocUnsafe(4 + extra.length);
  body.writeInt32BE(code, 0);
  extra.copy(body, 4);
  return message("R", body);
}

/**
 * NegotiateProtocolVersion: the newest protocol version the server speaks, coded as in the startup
 * packet (`3 << 16` for 3.0: libpq refuses anything lower), and the protocol options (`_pq_.*`) of
 * the startup packet it does not know.
 */
export function negotiateProtocolVersion(version: number, unknownOptions: readonly string[]): Buffer {
  const head = Buffer.allocUnsafe(8);
  head.writeInt32BE(version, 0);
  head.writeInt32BE(unknownOptions.length, 4);
  return message("v", Buffer.concat([head, ...unknownOptions.map(cstr)]));
}

/** NotificationResponse ('A'): the notifying backend's process id, the channel and the payload. */
export function decodeNotification(body: Buffer): { processId: number; channel: string; payload: string } {
  const r = new BodyReader(body);
  return { processId: r.int32(), channel: r.cstring(), payload: r.cstring() };
}

export function notificationResponse(processId: number, channel: string, payload: string): Buffer {
  const pid = Buffer.allocUnsafe(4);
  pid.writeInt32BE(processId, 0);
  return message("A", Buffer.concat([pid, cstr(channel), cstr(payload)]));
}

export function parameterStatus(name: string, value: string): Buffer {
  return message("S", Buffer.concat([cstr(name), cstr(value)]));
}

export function backendKeyData(processId: number, secretKey: number): Buffer {
  const body = Buffer.allocUnsafe(8);
  body.writeInt32BE(processId, 0);
  body.writeInt32BE(secretKey, 4);
  return message("K", body);
}

export type TransactionStatus = "I" | "T" | "E";

export function readyForQuery(status: TransactionStatus): Buffer {
  return message("Z", Buffer.from(status));
}

/** A DataRow from values (null: SQL NULL). */
export function dataRow(values: readonly (Buffer | null)[]): Buffer {
  let size = 2;
  for (const v of values) size += 4 + (v ? v.length : 0);
  const out = Buffer.allocUnsafe(size + 5);
  out[0] = 0x44;
  out.writeInt32BE(size + 4, 1);
  out.writeInt16BE(values.length, 5);
  let pos = 7;
  for (const v of values) {
    if (v === null) {
      out.writeInt32BE(-1, pos);
      pos += 4;
    } else {
      out.writeInt32BE(v.length, pos);
      pos += 4;
      v.copy(out, pos);
      pos += v.length;
    }
  }
  return out;
}

/** A RowDescription from fields (used when masking forces a column's format to text). */
export function rowDescription(fieldsList: readonly RowField[]): Buffer {
  const parts: Buffer[] = [];
  const head = Buffer.allocUnsafe(2);
  head.writeInt16BE(fieldsList.length, 0);
  parts.push(head);
  for (const f of fieldsList) {
    parts.push(cstr(f.name));
    const b = Buffer.allocUnsafe(18);
    b.writeUInt32BE(f.tableOid, 0);
    b.writeInt16BE(f.columnNumber, 4);
    b.writeUInt32BE(f.typeOid, 6);
    b.writeInt16BE(f.typeSize, 10);
    b.writeInt32BE(f.typeModifier, 12);
    b.writeInt16BE(f.format, 16);
    parts.push(b);
  }
  return message("T", Buffer.concat(parts));
}

export const SIMPLE_MESSAGES = {
  parseComplete: message("1", EMPTY),
  bindComplete: message("2", EMPTY),
  closeComplete: message("3", EMPTY),
  noData: message("n", EMPTY),
  emptyQuery: message("I", EMPTY),
  sslNo: Buffer.from("N"),
  sslYes: Buffer.from("S"),
} as const;

export function commandComplete(tag: string): Buffer {
  return message("C", cstr(tag));
}
