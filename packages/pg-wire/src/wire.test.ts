import { describe, expect, it } from "vitest";
import {
  bindFormatMismatch,
  FrameReader,
  ProtocolError,
  RelayScanner,
  HOLD,
  decodeBind,
  decodeFunctionCall,
  decodeInitial,
  encodeStartup,
  decodeParse,
  decodeDataRow,
  decodeErrorFields,
  decodeRowDescription,
  commandCompleteRows,
  decodeCommandComplete,
  errorResponse,
  dataRow,
  replaceDataRowValues,
  rowDescription,
  renderParameters,
  serialize,
  md5Password,
  ScramClient,
  type RelayHandler,
  type BindMessage,
} from "./index.js";

const startup = (params: Record<string, string>) => serialize.startup(params);

/** A realistic client stream: startup then a batch of extended and simple messages. */
function clientStream(): { initial: Buffer; typed: Buffer } {
  return {
    initial: startup({ user: "alice@example.com", database: "app" }),
    typed: Buffer.concat([
      serialize.query("SELECT 1; SELECT 'x'"),
      serialize.parse({ name: "s1", text: "SELECT $1::int + $10::int", types: [23] }),
      serialize.bind({ portal: "p1", statement: "s1", values: ["1", null, Buffer.from([1, 2])] }),
      serialize.describe({ type: "P", name: "p1" }),
      serialize.execute({ portal: "p1", rows: 10 }),
      serialize.sync(),
      serialize.end(),
    ]),
  };
}

function readAll(chunks: Buffer[]): { initial: Buffer[]; frames: { type: number; len: number }[] } {
  const r = new FrameReader(1 << 20);
  const initial: Buffer[] = [];
  const frames: { type: number; len: number }[] = [];
  for (const c of chunks) {
    r.push(c);
    for (;;) {
      if (r.initial) {
        const p = r.nextInitial();
        if (!p) break;
        initial.push(Buffer.from(p));
        r.initial = false;
        continue;
      }
      const f = r.next();
      if (!f) break;
      frames.push({ type: f.type, len: f.raw.length });
    }
  }
  return { initial, frames };
}

describe("FrameReader", () => {
  it("reads the same messages whatever the chunking (split at every byte)", () => {
    const { initial, typed } = clientStream();
    const all = Buffer.concat([initial, typed]);
    const whole = readAll([all]);
    expect(whole.frames.map((f) => String.fromCharCode(f.type)).join("")).toBe("QPBDESX");
    for (let i = 1; i < all.length; i++) {
      expect(readAll([all.subarray(0, i), all.subarray(i)])).toEqual(whole);
    }
    // one byte at a time
    expect(readAll([...all].map((b) => Buffer.from([b])))).toEqual(whole);
  });

  it("encodes a startup packet with exactly the parameters given (a client's client_encoding kept)", () => {
    const defaults = { client_encoding: "UTF8", user: "u", database: "d" };
    const packet = encodeStartup({ ...defaults, ...{ client_encoding: "LATIN1" } });
    expect(packet.readInt32BE(0)).toBe(packet.length);
    const s = decodeInitial(packet.subarray(4));
    expect(s.kind === "startup" && Object.fromEntries(s.parameters)).toEqual({
      client_encoding: "LATIN1",
      user: "u",
      database: "d",
    });
  });

  it("decodes a FunctionCall's function and argument count, and refuses a malformed one", () => {
    const call = (tail: number[]) => Buffer.from([0, 0, 3, 0xb8, ...tail]); // OID 952 (lo_open)
    // One format (binary) for both arguments, two int4 arguments, binary result.
    const ok = call([0, 1, 0, 1, 0, 2, 0, 0, 0, 4, 0, 0, 0, 7, 0, 0, 0, 4, 0, 4, 0, 0, 0, 1]);
    expect(decodeFunctionCall(ok)).toEqual({ oid: 952, argumentCount: 2 });
    expect(decodeFunctionCall(call([0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0, 0]))).toEqual({
      oid: 952,
      argumentCount: 1,
    });
    for (let cut = 0; cut < ok.length; cut++)
      expect(() => decodeFunctionCall(ok.subarray(0, cut))).toThrow(/malformed/);
    expect(() => decodeFunctionCall(Buffer.concat([ok, Buffer.from([0])]))).toThrow(/malformed/);
    expect(() => decodeFunctionCall(call([0, 2, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0]))).toThrow(/argument formats/);
    expect(() => decodeFunctionCall(call([0, 1, 0, 2, 0, 0, 0, 0]))).toThrow(/format/);
  });

  it("takes the later value of a startup parameter given twice, as PostgreSQL does", () => {
    const body = Buffer.concat([
      Buffer.from([0, 3, 0, 0]),
      Buffer.from("user\0a\0client_encoding\0'utf-8'\0user\0b\0client_encoding\0UTF8\0\0"),
    ]);
    const s = decodeInitial(body);
    expect(s.kind === "startup" && Object.fromEntries(s.parameters)).toEqual({ user: "b", client_encoding: "UTF8" });
  });

  it("decodes startup, SSL, GSSENC and cancel requests", () => {
    const s = decodeInitial(startup({ user: "a", database: "b" }).subarray(4));
    expect(s).toMatchObject({ kind: "startup" });
    if (s.kind === "startup") expect(Object.fromEntries(s.parameters)).toMatchObject({ user: "a", database: "b" });
    expect(decodeInitial(serialize.requestSsl().subarray(4))).toEqual({ kind: "ssl" });
    const gss = Buffer.alloc(4);
    gss.writeInt32BE(80877104);
    expect(decodeInitial(gss)).toEqual({ kind: "gssenc" });
    expect(decodeInitial(serialize.cancel(42, -7).subarray(4))).toEqual({
      kind: "cancel",
      processId: 42,
      secretKey: -7,
    });
    const v2 = Buffer.alloc(8);
    v2.writeInt32BE(2 << 16);
    expect(() => decodeInitial(v2)).toThrow(/unsupported frontend protocol 2\.0/);
  });

  it("bounds message length and rejects nonsense lengths", () => {
    const r = new FrameReader(1024);
    r.initial = false;
    const big = Buffer.alloc(5);
    big[0] = 0x51;
    big.writeInt32BE(4096, 1);
    r.push(big);
    expect(() => r.next()).toThrow(ProtocolError);
    const r2 = new FrameReader(1024);
    r2.initial = false;
    const neg = Buffer.from([0x51, 0xff, 0xff, 0xff, 0xff]);
    r2.push(neg);
    expect(() => r2.next()).toThrow(/invalid message length/);
    const r3 = new FrameReader(1024);
    r3.push(Buffer.from([0, 0, 0, 2]));
    expect(() => r3.nextInitial()).toThrow(/invalid startup packet length/);
  });

  it("reassembles a large message from many chunks without losing bytes", () => {
    const text = "SELECT '" + "x".repeat(300_000) + "'";
    const msg = serialize.query(text);
    const r = new FrameReader(1 << 20);
    r.initial = false;
    let got: Buffer | undefined;
    for (let i = 0; i < msg.length; i += 1000) {
      r.push(msg.subarray(i, i + 1000));
      const f = r.next();
      if (f) got = f.raw;
    }
    expect(got?.equals(msg)).toBe(true);
  });

  it("decodes Parse and Bind (statement and portal names in the right order, formats, NULL)", () => {
    const p = decodeParse(serialize.parse({ name: "S_1", text: "SELECT $1", types: [25] }).subarray(5));
    expect(p).toEqual({ name: "S_1", query: "SELECT $1", parameterTypes: [25] });
    const b = decodeBind(
      serialize
        .bind({ portal: "P_1", statement: "S_1", values: ["it's", null, Buffer.from([0xde, 0xad])] })
        .subarray(5),
    );
    expect(b.portal).toBe("P_1");
    expect(b.statement).toBe("S_1");
    expect(b.parameters[1]).toBeNull();
    expect(b.parameterFormats).toEqual([0, 0, 1]);
    expect(renderParameters(b)).toBe("$1 = 'it''s', $2 = NULL, $3 = '\\xdead'");
    // Binary values of declared simple types as their text; others (and wrong sizes) as hex.
    const int8 = Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
    const values = [Buffer.from([0, 0, 0, 7]), int8, Buffer.from("o'k"), Buffer.from([1]), Buffer.from([0, 1])];
    const typed = decodeBind(serialize.bind({ values }).subarray(5));
    expect(renderParameters(typed, [23, 20, 25, 16, 23])).toBe(
      "$1 = '7', $2 = '-2', $3 = 'o''k', $4 = 't', $5 = '\\x0001'",
    );
  });

  it("renders text past ASCII as hex when the client encoding is not UTF-8", () => {
    // Text format: LATIN1 bytes, ASCII; binary: text (declared), then an int4 whose bytes pass ASCII.
    const b: BindMessage = {
      portal: "",
      statement: "",
      parameterFormats: [0, 0, 1, 1],
      parameters: [
        Buffer.from("caf\xe9", "latin1"),
        Buffer.from("plain"),
        Buffer.from("caf\xe8", "latin1"),
        Buffer.from([0, 0, 0, 0xe9]),
      ],
      resultFormats: [],
    };
    expect(renderParameters(b, [0, 0, 25, 23], 256, true)).toBe(
      "$1 = '\\x636166e9', $2 = 'plain', $3 = '\\x636166e8', $4 = '233'",
    );
    expect(renderParameters(b, [0, 0, 25, 23], 256, false)).toBe(
      "$1 = 'caf\ufffd', $2 = 'plain', $3 = 'caf\ufffd', $4 = '233'",
    );
  });

  it("finds a Bind's parameter format count that is not its parameter count, as PostgreSQL words it, and never throws", () => {
    /** A Bind body: names, the format codes, the parameter count, parameters of 4 bytes, no result formats. */
    const bind = (formats: number, parameters: number) => {
      const parts = [Buffer.from("p\0s\0"), Buffer.alloc(2 + formats * 2), Buffer.alloc(2)];
      (parts[1] as Buffer).writeInt16BE(formats, 0);
      (parts[2] as Buffer).writeInt16BE(parameters, 0);
      for (let i = 0; i < parameters; i++) parts.push(Buffer.from([0, 0, 0, 4, 1, 2, 3, 4]));
      parts.push(Buffer.alloc(2));
      return Buffer.concat(parts);
    };
    for (const [formats, parameters] of [
      [0, 0],
      [0, 3],
      [1, 3],
      [1, 0],
      [2, 2],
      [3, 3],
    ]) {
      expect(bindFormatMismatch(bind(formats!, parameters!))).toBeUndefined();
      expect(decodeBind(bind(formats!, parameters!)).parameters).toHaveLength(parameters!);
    }
    for (const [formats, parameters] of [
      [2, 1],
      [2, 3],
      [3, 0],
    ]) {
      const body = bind(formats!, parameters!);
      expect(bindFormatMismatch(body)).toBe(
        `bind message has ${formats} parameter formats but ${parameters} parameters`,
      );
      expect(() => decodeBind(body)).toThrow(/parameter formats/);
      // Whatever follows the counts, cut anywhere after them: the same answer (PostgreSQL reads no further).
      const counted = 4 + 2 + formats! * 2 + 2;
      for (let end = counted; end <= body.length; end++)
        expect(bindFormatMismatch(body.subarray(0, end)), `cut at ${end}`).toBe(bindFormatMismatch(body));
      // Cut before the counts: not this function's to refuse (decodeBind's).
      for (let end = 0; end < counted; end++) {
        expect(bindFormatMismatch(body.subarray(0, end)), `cut at ${end}`).toBeUndefined();
        expect(() => decodeBind(body.subarray(0, end))).toThrow(ProtocolError);
      }
    }
    // Random bodies (counts from -1 to 4 where a Bind has them, random bytes around): never throws;
    // it finds a mismatch exactly when the counts differ and there is more than one format, and
    // decodeBind refuses those messages too.
    let seed = 11;
    const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), seed);
    const noise = (n: number) => Buffer.from(Array.from({ length: n }, () => rand() & 0xff));
    let found = 0;
    for (let n = 0; n < 5000; n++) {
      const formats = (rand() % 6) - 1;
      const parameters = (rand() % 6) - 1;
      const counts = Buffer.alloc(4);
      counts.writeInt16BE(formats, 0);
      counts.writeInt16BE(parameters, 2);
      const b = Buffer.concat([
        Buffer.from("a\0\0"),
        counts.subarray(0, 2),
        noise(Math.max(0, formats) * 2),
        counts.subarray(2),
        noise(rand() % 20),
      ]).subarray(0, rand() % 3 === 0 ? rand() % 30 : undefined);
      const complete = b.length >= 3 + 2 + Math.max(0, formats) * 2 + 2;
      const expected = complete && formats > 1 && parameters >= 0 && parameters !== formats;
      expect(bindFormatMismatch(b) !== undefined, b.toString("hex")).toBe(expected);
      if (expected) {
        found++;
        expect(() => decodeBind(b)).toThrow(/parameter formats/);
      }
    }
    expect(found).toBeGreaterThan(500);
  });

  it("renders $10 as the tenth parameter", () => {
    const values = Array.from({ length: 10 }, (_, i) => String(i + 1));
    const b = decodeBind(serialize.bind({ values }).subarray(5));
    expect(renderParameters(b)).toContain("$10 = '10'");
    expect(renderParameters(b)).toContain("$1 = '1',");
  });

  it("never throws anything but ProtocolError on random input (fuzz)", () => {
    let seed = 7;
    const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), seed);
    for (let n = 0; n < 3000; n++) {
      const len = rand() % 64;
      const b = Buffer.alloc(len);
      for (let i = 0; i < len; i++) b[i] = rand() & 0xff;
      for (const fn of [
        decodeParse,
        decodeBind,
        decodeInitial,
        decodeRowDescription,
        decodeDataRow,
        decodeErrorFields,
      ]) {
        try {
          fn(b);
        } catch (error) {
          expect(error).toBeInstanceOf(ProtocolError);
        }
      }
    }
  });
});

function relay(
  chunks: Buffer[],
  opts: { stream: boolean; rewrite?: (type: number, raw: Buffer) => Buffer[] | undefined },
) {
  const out: Buffer[] = [];
  const seen: string[] = [];
  const handler: RelayHandler = {
    streamable: (t) => opts.stream && t === 0x44,
    message: (t, raw) => {
      seen.push(String.fromCharCode(t));
      return opts.rewrite?.(t, raw);
    },
    streamed: (t) => seen.push(`~${String.fromCharCode(t)}`),
    forward: (b) => out.push(Buffer.from(b)),
  };
  const s = new RelayScanner(handler, 1 << 16);
  for (const c of chunks) s.push(c);
  return { bytes: Buffer.concat(out), seen };
}

describe("RelayScanner", () => {
  const fields = [
    { name: "id", tableOid: 1, columnNumber: 1, typeOid: 23, typeSize: 4, typeModifier: -1, format: 0 },
    { name: "email", tableOid: 1, columnNumber: 2, typeOid: 25, typeSize: -1, typeModifier: -1, format: 0 },
  ];
  const server = Buffer.concat([
    rowDescription(fields),
    dataRow([Buffer.from("1"), Buffer.from("a@example.com")]),
    dataRow([Buffer.from("2"), null]),
    dataRow([Buffer.from("3"), Buffer.from("x".repeat(200))]),
    Buffer.from([0x43, 0, 0, 0, 13, ...Buffer.from("SELECT 3\0")]),
    Buffer.from([0x5a, 0, 0, 0, 5, 0x49]),
  ]);

  it("forwards everything unchanged, split at every byte, streaming or not", () => {
    for (const stream of [false, true]) {
      for (let i = 1; i < server.length; i++) {
        const r = relay([server.subarray(0, i), server.subarray(i)], { stream });
        expect(r.bytes.equals(server)).toBe(true);
      }
    }
  });

  it("says when it has forwarded part of a streamed message and not the rest (midMessage)", () => {
    const rowStart = rowDescription(fields).length;
    const rowEnd = rowStart + dataRow([Buffer.from("1"), Buffer.from("a@example.com")]).length;
    for (let i = 1; i < server.length; i++) {
      const scanner = new RelayScanner(
        { streamable: (t) => t === 0x44, message: () => undefined, forward: () => undefined },
        1 << 16,
      );
      scanner.push(server.subarray(0, i));
      // Streamed only once its header (5 bytes) is in; a whole message or a boundary is not "mid".
      const inFirstRow = i >= rowStart + 5 && i < rowEnd;
      if (inFirstRow) expect(scanner.midMessage, String(i)).toBe(true);
      if (i === rowStart || i === rowEnd) expect(scanner.midMessage, String(i)).toBe(false);
    }
  });

  it("rewrites whole messages at every split point", () => {
    const rewrite = (t: number, raw: Buffer) => {
      if (t !== 0x44) return undefined;
      const values = decodeDataRow(raw.subarray(5));
      return [dataRow(values.map((v, i) => (i === 1 && v ? Buffer.from("****") : v)))];
    };
    const whole = relay([server], { stream: false, rewrite }).bytes;
    expect(whole.includes(Buffer.from("a@example.com"))).toBe(false);
    expect(whole.includes(Buffer.from("****"))).toBe(true);
    for (let i = 1; i < server.length; i++) {
      expect(relay([server.subarray(0, i), server.subarray(i)], { stream: false, rewrite }).bytes.equals(whole)).toBe(
        true,
      );
    }
  });

  it("streams a row larger than the message limit when it needs no inspection, refuses it otherwise", () => {
    const big = dataRow([Buffer.alloc(200_000, 0x61)]);
    const chunks: Buffer[] = [];
    for (let i = 0; i < big.length; i += 65536) chunks.push(big.subarray(i, i + 65536));
    const r = relay(chunks, { stream: true });
    expect(r.bytes.equals(big)).toBe(true);
    expect(r.seen).toEqual(["~D"]);
    expect(() => relay(chunks, { stream: false })).toThrow(/over this proxy's limit/);
  });

  it("holds at a message and resumes with it, whatever arrives meanwhile, split at every pair of points", () => {
    // Holds at the RowDescription the first time it sees it; resumes after the k-th later chunk.
    for (let i = 1; i < server.length; i += 3) {
      for (let j = i; j < server.length; j += 5) {
        const chunks = [server.subarray(0, i), server.subarray(i, j), server.subarray(j)];
        for (let resumeAfter = 0; resumeAfter < 3; resumeAfter++) {
          const out: Buffer[] = [];
          let holds = 0;
          let heldBeforeResume = false;
          const handler: RelayHandler = {
            streamable: (t) => t === 0x44,
            message: (t) => (t === 0x54 && holds++ === 0 ? HOLD : undefined),
            forward: (b) => out.push(Buffer.from(b)),
          };
          const scanner = new RelayScanner(handler, 1 << 16);
          chunks.forEach((c, k) => {
            scanner.push(c);
            if (k === resumeAfter && scanner.isHeld) {
              heldBeforeResume = true;
              expect(Buffer.concat(out).length).toBe(0); // nothing of the held message went out
              scanner.resume();
            }
          });
          if (scanner.isHeld) {
            heldBeforeResume = true;
            scanner.resume();
          }
          expect(heldBeforeResume).toBe(true);
          expect(holds).toBe(2); // delivered again after resume
          expect(Buffer.concat(out).equals(server), `${i}/${j}/${resumeAfter}`).toBe(true);
        }
      }
    }
  });

  it("hands on one buffer per push when it rewrote messages (not one write per row)", () => {
    const rows = Buffer.concat(
      Array.from({ length: 50 }, (_, i) => dataRow([Buffer.from(String(i)), Buffer.from("a@b.io")])),
    );
    const forwards: Buffer[] = [];
    const scanner = new RelayScanner(
      {
        streamable: () => false,
        message: (t, raw) =>
          t === 0x44
            ? [
                replaceDataRowValues(
                  raw,
                  (i) => i === 1,
                  () => Buffer.from("*"),
                )!,
              ]
            : undefined,
        forward: (b) => forwards.push(Buffer.from(b)),
      },
      1 << 16,
    );
    scanner.push(rows);
    expect(forwards).toHaveLength(1);
    const expected = Buffer.concat(
      Array.from({ length: 50 }, (_, i) => dataRow([Buffer.from(String(i)), Buffer.from("*")])),
    );
    expect(forwards[0]!.equals(expected)).toBe(true);
  });

  it("replaces chosen values of a DataRow without decoding the others", () => {
    const row = dataRow([Buffer.from("1"), null, Buffer.from("secret"), Buffer.from("keep")]);
    const asked: number[] = [];
    const same = replaceDataRowValues(
      row,
      (i) => i !== 3,
      (i, v) => {
        asked.push(i);
        return v;
      },
    );
    expect(same).toBeUndefined(); // nothing changed: relay the original
    expect(asked).toEqual([0, 2]); // NULLs and unwanted columns are not asked about
    const masked = replaceDataRowValues(
      row,
      (i) => i === 2 || i === 0,
      (i) => (i === 2 ? Buffer.from("****") : null),
    )!;
    expect(decodeDataRow(masked.subarray(5))).toEqual([null, null, Buffer.from("****"), Buffer.from("keep")]);
    expect(masked.readInt32BE(1)).toBe(masked.length - 1);
    // Malformed rows are protocol errors, like decodeDataRow's.
    const bad = [
      row.subarray(0, row.length - 1),
      Buffer.concat([row, Buffer.from([0])]),
      Buffer.from([0x44, 0, 0, 0, 6, 0xff, 0xff]),
      Buffer.from([0x44, 0, 0, 0, 10, 0, 1, 0, 0, 0, 9]),
      Buffer.from([0x44, 0, 0, 0, 10, 0, 1, 0xff, 0xff, 0xff, 0x8f]), // a length below -1
    ];
    for (const b of bad)
      expect(() =>
        replaceDataRowValues(
          b,
          () => true,
          (_, v) => v,
        ),
      ).toThrow(ProtocolError);
  });

  it("decodes what the agent inspects", () => {
    expect(decodeRowDescription(rowDescription(fields).subarray(5))).toEqual(fields);
    expect(decodeCommandComplete(Buffer.from("INSERT 0 7\0"))).toEqual({ tag: "INSERT 0 7", rows: 7 });
    expect(decodeCommandComplete(Buffer.from("BEGIN\0")).rows).toBeUndefined();
    // The relay's reader of the count gives what the decoder gives, for every kind of tag.
    const tags = [
      "SELECT 1",
      "INSERT 0 7",
      "UPDATE 1234567890",
      "BEGIN",
      "CREATE TABLE",
      "SELECT ",
      "COPY 12x",
      "FETCH 0",
      "MOVE 9007199254740993",
      " 5",
      "5",
      "",
      "DELETE 00012",
      "SELECT 1\0junk",
    ];
    for (const tag of tags) {
      const message = Buffer.concat([Buffer.from([0x43, 0, 0, 0, 0]), Buffer.from(`${tag}\0`)]);
      message.writeInt32BE(message.length - 1, 1);
      expect(commandCompleteRows(message), tag).toBe(decodeCommandComplete(message.subarray(5)).rows);
    }
    const e = decodeErrorFields(errorResponse({ code: "42501", message: "denied", hint: "ask" }).subarray(5));
    expect(e).toMatchObject({ severity: "ERROR", code: "42501", message: "denied", hint: "ask" });
    const at = decodeErrorFields(errorResponse({ code: "42601", message: "syntax", position: 12 }).subarray(5));
    expect(at).toMatchObject({ code: "42601", position: "12" });
    expect(
      decodeErrorFields(errorResponse({ code: "42601", message: "x", position: 0 }).subarray(5)),
    ).not.toHaveProperty("position");
  });
});

describe("auth", () => {
  it("says in SCRAM's gs2 header whether it binds, could bind, or cannot", () => {
    expect(new ScramClient("pw", undefined, "nonce").first()).toBe("n,,n=,r=nonce");
    expect(new ScramClient("pw", undefined, "nonce", true).first()).toBe("y,,n=,r=nonce");
    const bound = new ScramClient("pw", Buffer.alloc(32, 1), "nonce");
    expect(bound.mechanism).toBe("SCRAM-SHA-256-PLUS");
    expect(bound.first()).toBe("p=tls-server-end-point,,n=,r=nonce");
  });

  it("computes PostgreSQL's md5 password", () => {
    // md5 of md5("secret" + "bob") + salt, computed independently
    expect(md5Password("bob", "secret", Buffer.from([1, 2, 3, 4]))).toMatch(/^md5[0-9a-f]{32}$/);
  });
});
