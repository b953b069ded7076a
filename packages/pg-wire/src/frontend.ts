/**
 * Frontend messages (client -> server) of the PostgreSQL protocol 3.0: an incremental, bounded
 * reader for what clients send a proxy, and decoders for each message the agent inspects.
 * Encoders for the messages the agent itself sends to a target come from `pg-protocol`.
 *
 * The reader never holds more than one message plus one chunk; a message over `maxMessageBytes`
 * is a protocol violation the caller reports (08P01) before closing that session.
 */
import { isAscii } from "node:buffer";

export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;
export const PROTOCOL_3 = 196608;

export class ProtocolError extends Error {
  constructor(
    message: string,
    /** SQLSTATE to report. */
    readonly code = "08P01",
  ) {
    super(message);
  }
}

/** First message of a connection (no type byte). */
export type InitialMessage =
  | { kind: "ssl" }
  | { kind: "gssenc" }
  | { kind: "cancel"; processId: number; secretKey: number }
  | { kind: "startup"; version: number; parameters: Map<string, string> };

/** A typed frontend message: its type byte and body (without the 5-byte header). */
export interface Frame {
  type: number;
  body: Buffer;
  /** The whole message, header included (for forwarding unchanged). */
  raw: Buffer;
}

const EMPTY = Buffer.alloc(0);

/**
 * Splits a byte stream into frames. `initial` mode reads untyped startup-phase messages
 * (length + payload); afterwards typed messages (type + length + payload).
 */
export class FrameReader {
  private pending: Buffer = EMPTY;
  /** Chunks of a message known to be incomplete, and how many bytes they hold (no quadratic concat). */
  private parts: Buffer[] = [];
  private partBytes = 0;
  private wanted = 0;
  initial = true;

  constructor(private readonly maxMessageBytes: number) {}

  /** Bytes received but not yet part of a whole message. */
  get buffered(): number {
    return this.pending.length + this.partBytes;
  }

  push(chunk: Buffer): void {
    if (this.parts.length > 0) {
      this.parts.push(chunk);
      this.partBytes += chunk.length;
      if (this.partBytes < this.wanted) return;
      this.pending = Buffer.concat(this.parts, this.partBytes);
      this.parts = [];
      this.partBytes = 0;
      return;
    }
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
  }

  /** Keeps an incomplete message of `total` bytes aside until it is whole. */
  private wait(total: number): undefined {
    if (this.pending.length >= 64 * 1024) {
      this.parts = [this.pending];
      this.partBytes = this.pending.length;
      this.wanted = total;
      this.pending = EMPTY;
    }
    return undefined;
  }

  /** The next whole initial message's payload (after the length), or undefined when incomplete. */
  nextInitial(): Buffer | undefined {
    const buf = this.pending;
    if (buf.length < 4) return undefined;
    const length = buf.readInt32BE(0);
    if (length < 8 || length > 10_000) throw new ProtocolError(`invalid startup packet length ${length}`);
    if (buf.length < length) return undefined;
    const payload = buf.subarray(4, length);
    this.pending = buf.subarray(length);
    return payload;
  }

  /** The next whole typed message, or undefined when incomplete. */
  next(): Frame | undefined {
    const buf = this.pending;
    if (buf.length < 5) return undefined;
    const length = buf.readInt32BE(1);
    if (length < 4) throw new ProtocolError(`invalid message length ${length}`);
    if (length > this.maxMessageBytes)
      throw new ProtocolError(
        `message of ${length} bytes is over this proxy's limit of ${this.maxMessageBytes} bytes`,
        "54000",
      );
    const end = length + 1;
    if (buf.length < end) return this.wait(end);
    // A chunk holding exactly one message (a simple query) is that message: no view of it made.
    const whole = end === buf.length;
    const raw = whole ? buf : buf.subarray(0, end);
    this.pending = whole ? EMPTY : buf.subarray(end);
    return { type: buf[0] as number, body: raw.subarray(5), raw };
  }

  /** Takes whatever is buffered (e.g. a TLS ClientHello that arrived instead of a startup packet). */
  drain(): Buffer {
    const b = this.parts.length > 0 ? Buffer.concat([...this.parts]) : this.pending;
    this.pending = EMPTY;
    this.parts = [];
    this.partBytes = 0;
    return b;
  }
}

/** Reads NUL-terminated strings and integers from a message body, bounds-checked. */
export class BodyReader {
  offset = 0;
  constructor(private readonly body: Buffer) {}

  get remaining(): number {
    return this.body.length - this.offset;
  }

  cstring(): string {
    const end = this.body.indexOf(0, this.offset);
    if (end < 0) throw new ProtocolError("malformed message: unterminated string");
    const s = this.body.toString("utf8", this.offset, end);
    this.offset = end + 1;
    return s;
  }

  int16(): number {
    if (this.offset + 2 > this.body.length) throw new ProtocolError("malformed message: truncated");
    const v = this.body.readInt16BE(this.offset);
    this.offset += 2;
    return v;
  }

  int32(): number {
    if (this.offset + 4 > this.body.length) throw new ProtocolError("malformed message: truncated");
    const v = this.body.readInt32BE(this.offset);
    this.offset += 4;
    return v;
  }

  bytes(n: number): Buffer {
    if (n < 0 || this.offset + n > this.body.length) throw new ProtocolError("malformed message: truncated");
    const v = this.body.subarray(this.offset, this.offset + n);
    this.offset += n;
    return v;
  }

  byte(): number {
    if (this.offset >= this.body.length) throw new ProtocolError("malformed message: truncated");
    return this.body[this.offset++] as number;
  }
}

export function decodeInitial(payload: Buffer): InitialMessage {
  const r = new BodyReader(payload);
  const code = r.int32();
  if (code === SSL_REQUEST_CODE && payload.length === 4) return { kind: "ssl" };
  if (code === GSSENC_REQUEST_CODE && payload.length === 4) return { kind: "gssenc" };
  if (code === CANCEL_REQUEST_CODE) {
    if (payload.length !== 12) throw new ProtocolError("malformed cancel request");
    return { kind: "cancel", processId: r.int32(), secretKey: r.int32() };
  }
  const major = code >> 16;
  if (major !== 3)
    throw new ProtocolError(
      `unsupported frontend protocol ${major}.${code & 0xffff}: server supports 3.0 to 3.0`,
      "0A000",
    );
  const parameters = new Map<string, string>();
  for (;;) {
    const key = r.cstring();
    if (key === "") break;
    const value = r.cstring();
    // Given twice, the later value counts, as on PostgreSQL (asyncpg sends client_encoding twice when
    // it is also among its server_settings).
    parameters.delete(key);
    parameters.set(key, value);
  }
  if (r.remaining !== 0) throw new ProtocolError("malformed startup packet");
  return { kind: "startup", version: code, parameters };
}

export interface ParseMessage {
  name: string;
  query: string;
  parameterTypes: number[];
}

export function decodeParse(body: Buffer): ParseMessage {
  const r = new BodyReader(body);
  const name = r.cstring();
  const query = r.cstring();
  const n = r.int16();
  if (n < 0) throw new ProtocolError("malformed Parse message");
  const parameterTypes: number[] = [];
  for (let i = 0; i < n; i++) parameterTypes.push(r.int32() >>> 0);
  if (r.remaining !== 0) throw new ProtocolError("malformed Parse message");
  return { name, query, parameterTypes };
}

export interface BindMessage {
  portal: string;
  statement: string;
  /** Format of each parameter (0 text, 1 binary), expanded to one per parameter. */
  parameterFormats: number[];
  /** Raw parameter values; null for SQL NULL. */
  parameters: (Buffer | null)[];
  /** Result column format codes as sent (0, 1 or n entries). */
  resultFormats: number[];
}

export function decodeBind(body: Buffer): BindMessage {
  const r = new BodyReader(body);
  const portal = r.cstring();
  const statement = r.cstring();
  const nf = r.int16();
  if (nf < 0) throw new ProtocolError("malformed Bind message");
  const formats: number[] = [];
  for (let i = 0; i < nf; i++) formats.push(r.int16());
  const np = r.int16();
  if (np < 0 || (nf > 1 && nf !== np)) throw new ProtocolError("malformed Bind message: parameter formats");
  const parameters: (Buffer | null)[] = [];
  for (let i = 0; i < np; i++) {
    const len = r.int32();
    if (len < -1) throw new ProtocolError("malformed Bind message: parameter length");
    parameters.push(len === -1 ? null : r.bytes(len));
  }
  const nr = r.int16();
  if (nr < 0) throw new ProtocolError("malformed Bind message");
  const resultFormats: number[] = [];
  for (let i = 0; i < nr; i++) resultFormats.push(r.int16());
  if (r.remaining !== 0) throw new ProtocolError("malformed Bind message");
  const parameterFormats = parameters.map((_, i) =>
    nf === 0 ? 0 : nf === 1 ? (formats[0] as number) : (formats[i] as number),
  );
  return { portal, statement, parameterFormats, parameters, resultFormats };
}

/**
 * PostgreSQL's error for a Bind with more than one parameter format whose count is not the number
 * of parameters, or undefined. The server reads the two counts first and answers this with an
 * ERROR (08P01), the session going on, whatever follows them; decodeBind throws on the same
 * message, as on anything malformed, which ends a session. Undefined too when the body ends before
 * the counts (decodeBind's to refuse). Never throws.
 */
export function bindFormatMismatch(body: Buffer): string | undefined {
  const portalEnd = body.indexOf(0);
  const statementEnd = portalEnd < 0 ? -1 : body.indexOf(0, portalEnd + 1);
  if (statementEnd < 0 || statementEnd + 3 > body.length) return undefined;
  const formats = body.readInt16BE(statementEnd + 1);
  const at = statementEnd + 3 + formats * 2;
  if (formats <= 1 || at + 2 > body.length) return undefined;
  const parameters = body.readInt16BE(at);
  return parameters >= 0 && parameters !== formats
    ? `bind message has ${formats} parameter formats but ${parameters} parameters`
    : undefined;
}

/** Portal and statement names of a Bind, without decoding its parameters (hot path). */
export function bindNames(body: Buffer): { portal: string; statement: string } {
  const r = new BodyReader(body);
  return { portal: r.cstring(), statement: r.cstring() };
}

/**
 * FunctionCall (the fast-path interface libpq's large-object functions use): the function's OID and
 * how many arguments it is given. The whole message is checked; its argument bytes are not kept.
 */
export function decodeFunctionCall(body: Buffer): { oid: number; argumentCount: number } {
  const r = new BodyReader(body);
  const oid = r.int32() >>> 0;
  const nf = r.int16();
  if (nf < 0) throw new ProtocolError("malformed FunctionCall message");
  for (let i = 0; i < nf; i++)
    if ((r.int16() & ~1) !== 0) throw new ProtocolError("malformed FunctionCall message: format");
  const argumentCount = r.int16();
  if (argumentCount < 0 || (nf > 1 && nf !== argumentCount))
    throw new ProtocolError("malformed FunctionCall message: argument formats");
  for (let i = 0; i < argumentCount; i++) {
    const len = r.int32();
    if (len < -1) throw new ProtocolError("malformed FunctionCall message: argument length");
    if (len > 0) r.bytes(len);
  }
  if ((r.int16() & ~1) !== 0 || r.remaining !== 0) throw new ProtocolError("malformed FunctionCall message");
  return { oid, argumentCount };
}

export function decodeExecute(body: Buffer): { portal: string; maxRows: number } {
  const r = new BodyReader(body);
  const portal = r.cstring();
  const maxRows = r.int32();
  return { portal, maxRows };
}

/** Describe and Close: `S` statement or `P` portal, and its name. */
export function decodeTarget(body: Buffer): { target: "S" | "P"; name: string } {
  const r = new BodyReader(body);
  const t = r.byte();
  if (t !== 0x53 && t !== 0x50) throw new ProtocolError("malformed message: expected 'S' or 'P'");
  return { target: t === 0x53 ? "S" : "P", name: r.cstring() };
}

export function decodeQuery(body: Buffer): string {
  const r = new BodyReader(body);
  const q = r.cstring();
  if (r.remaining !== 0) throw new ProtocolError("malformed Query message");
  return q;
}

export function decodePassword(body: Buffer): string {
  const r = new BodyReader(body);
  return r.cstring();
}

/**
 * Renders Bind parameters into audit text in one pass: `$1 = 'value'` pairs, text values quoted
 * with doubled quotes, NULL as NULL, each value cut at `maxValueChars`. A binary value of a type the
 * Parse declared (`types`, by position) is shown as its text when the type is a number, a boolean
 * or text (pgjdbc and psycopg send those in binary); other binary values as hex. With `asciiOnly`
 * (a client encoding other than UTF-8: text comes in that encoding), text with bytes past ASCII is
 * shown as hex too, rather than misread as UTF-8 (review 49: LATIN1's `café` and `cafè` both read
 * `caf\ufffd`).
 */
export function renderParameters(
  bind: BindMessage,
  types: readonly number[] = [],
  maxValueChars = 256,
  asciiOnly = false,
): string {
  let out = "";
  for (let i = 0; i < bind.parameters.length; i++) {
    const v = bind.parameters[i];
    if (i > 0) out += ", ";
    out += `$${i + 1} = `;
    if (v === null || v === undefined) {
      out += "NULL";
      continue;
    }
    const binary = bind.parameterFormats[i] === 1;
    const type = types[i] ?? 0;
    const text =
      asciiOnly && (!binary || TEXT_TYPES.has(type)) && !isAscii(v)
        ? undefined
        : binary
          ? binaryParameterText(type, v)
          : v.toString("utf8");
    if (text === undefined) {
      const hex = v.subarray(0, Math.ceil(maxValueChars / 2)).toString("hex");
      out += `'\\x${hex}${v.length * 2 > maxValueChars ? "…" : ""}'`;
      continue;
    }
    let s = text as string;
    const cut = s.length > maxValueChars;
    if (cut) s = s.slice(0, maxValueChars);
    out += `'${s.replaceAll("'", "''")}${cut ? "…" : ""}'`;
  }
  return out;
}

/** Text types, sent the same in binary as in text: text, varchar, bpchar, name. */
const TEXT_TYPES: ReadonlySet<number> = new Set([25, 1043, 1042, 19]);

/** The text of a binary parameter of a simple type (undefined: another type, or not its size). */
function binaryParameterText(type: number, v: Buffer): string | undefined {
  switch (type) {
    case 16: // bool
      return v.length === 1 ? (v[0] === 0 ? "f" : "t") : undefined;
    case 21: // int2
      return v.length === 2 ? String(v.readInt16BE(0)) : undefined;
    case 23: // int4
      return v.length === 4 ? String(v.readInt32BE(0)) : undefined;
    case 26: // oid
      return v.length === 4 ? String(v.readUInt32BE(0)) : undefined;
    case 20: // int8
      return v.length === 8 ? v.readBigInt64BE(0).toString() : undefined;
    case 700: // float4
      return v.length === 4 ? String(v.readFloatBE(0)) : undefined;
    case 701: // float8
      return v.length === 8 ? String(v.readDoubleBE(0)) : undefined;
    case 25:
    case 1043:
    case 1042:
    case 19:
      return v.toString("utf8");
    default:
      return undefined;
  }
}

/**
 * A protocol 3.0 startup packet with exactly these parameters, in this order. (pg-protocol's
 * `serialize.startup` appends `client_encoding=UTF8` after them, which overrides a client's own.)
 */
export function encodeStartup(parameters: Readonly<Record<string, string>>): Buffer {
  const parts: Buffer[] = [];
  for (const [key, value] of Object.entries(parameters)) parts.push(Buffer.from(`${key}\0${value}\0`, "utf8"));
  parts.push(Buffer.from([0]));
  const body = Buffer.concat(parts);
  const header = Buffer.allocUnsafe(8);
  header.writeInt32BE(8 + body.length, 0);
  header.writeInt32BE(PROTOCOL_3, 4);
  return Buffer.concat([header, body]);
}
