import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { backoffDelay } from "./backoff.js";
import { createUlidFactory } from "./ulid.js";
import { decodeEnrolmentToken, encodeEnrolmentToken, newEnrolmentSecret } from "./enrolment.js";
import { AppError, grpcStatusByCode, httpStatusByCode, isAppError, ErrorCode } from "./errors.js";
import { createLogger } from "./logger.js";
import { generateSecret, hashSecret, parseSecret, SecretKind, verifySecret } from "./secrets.js";

describe("secrets", () => {
  it("generates prefixed secrets that verify against their hash only", () => {
    const s = generateSecret(SecretKind.apiKey);
    expect(s.value).toMatch(/^moat_ak_[a-z0-9]{16}_[A-Za-z0-9_-]{43}$/);
    expect(s.hash).toBe(hashSecret(s.value));
    expect(s.hash).not.toContain(s.value.slice(-43));
    expect(verifySecret(s.value, s.hash)).toBe(true);
    expect(verifySecret(s.value + "x", s.hash)).toBe(false);
    expect(verifySecret(generateSecret(SecretKind.apiKey, s.id).value, s.hash)).toBe(false);
    expect(verifySecret(s.value, "not-hex")).toBe(false);
  });

  it("parses only well-formed secrets", () => {
    const s = generateSecret(SecretKind.agentCredential, "agent0001");
    expect(parseSecret(s.value)).toEqual({ kind: "moat_ac", id: "agent0001" });
    for (const bad of [
      "",
      "moat_ak_",
      "moat_ak_short_x",
      "moat_zz_abcdefgh_" + "a".repeat(43),
      s.value + "!",
      s.value.slice(0, -1),
    ]) {
      expect(parseSecret(bad)).toBeUndefined();
    }
    expect(() => generateSecret(SecretKind.apiKey, "UPPER")).toThrow();
  });
});

describe("enrolment tokens", () => {
  const token = {
    agentId: "abcdefgh12345678",
    secret: newEnrolmentSecret(),
    caFingerprint: "f".repeat(64),
    endpoint: "cp.example.com:7071",
  };

  it("round-trips", () => {
    expect(decodeEnrolmentToken(encodeEnrolmentToken(token))).toEqual(token);
    expect(decodeEnrolmentToken(`  ${encodeEnrolmentToken(token)}\n`)).toEqual(token);
  });

  it("rejects malformed tokens without echoing them", () => {
    const cases = [
      "",
      "moat_et1_",
      "moat_et1_!!!",
      "moat_et2_" + encodeEnrolmentToken(token).slice(9),
      encodeEnrolmentToken({ ...token, caFingerprint: "xyz" }),
      encodeEnrolmentToken({ ...token, secret: "short" }),
    ];
    for (const value of cases) {
      let message = "";
      try {
        decodeEnrolmentToken(value);
      } catch (error) {
        message = (error as Error).message;
      }
      expect(message).toMatch(/enrolment token/);
      expect(message).not.toContain(token.secret);
    }
  });

  it("survives every truncation with an error, never a crash", () => {
    const value = encodeEnrolmentToken(token);
    for (let i = 0; i < value.length; i++) {
      expect(() => decodeEnrolmentToken(value.slice(0, i))).toThrow(/enrolment token/);
    }
  });
});

describe("backoff", () => {
  it("grows exponentially, is capped, and stays within [ceiling/2, ceiling]", () => {
    const options = { initialMs: 100, maxMs: 4000 };
    expect(backoffDelay(0, options, () => 0)).toBe(50);
    expect(backoffDelay(0, options, () => 1)).toBe(100);
    expect(backoffDelay(3, options, () => 1)).toBe(800);
    expect(backoffDelay(30, options, () => 1)).toBe(4000);
    expect(backoffDelay(30, options, () => 0)).toBe(2000);
    for (let i = 0; i < 100; i++) {
      const d = backoffDelay(i % 10, options);
      expect(d).toBeGreaterThanOrEqual(50);
      expect(d).toBeLessThanOrEqual(4000);
    }
  });
});

describe("errors", () => {
  it("maps every code to an HTTP and a gRPC status", () => {
    for (const code of Object.values(ErrorCode)) {
      expect(httpStatusByCode[code]).toBeGreaterThanOrEqual(400);
      expect(grpcStatusByCode[code]).toBeGreaterThan(0);
    }
    const error = new AppError("not_found", "no such agent", { cause: new Error("db detail") });
    expect(error.httpStatus).toBe(404);
    expect(error.grpcStatus).toBe(5);
    expect(isAppError(error)).toBe(true);
    expect(isAppError(new Error("x"))).toBe(false);
  });
});

describe("logger", () => {
  it("redacts secret-named fields", async () => {
    let out = "";
    const sink = new Writable({
      write(chunk, _enc, done) {
        out += chunk.toString();
        done();
      },
    });
    const logger = createLogger({ name: "t", destination: sink });
    logger.info(
      {
        password: "p4ss",
        apiKey: "k3y",
        nested: { token: "t0k", credential: "c" },
        req: { headers: { authorization: "Bearer zzz" } },
        ok: "visible",
      },
      "hello",
    );
    await new Promise((r) => setImmediate(r));
    expect(out).toContain("visible");
    for (const secret of ["p4ss", "k3y", "t0k", '"c"', "zzz"]) expect(out).not.toContain(secret);
  });
});

describe("ulid", () => {
  const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  const decode = (id: string) => {
    let v = 0n;
    for (const c of id) v = v * 32n + BigInt(ALPHABET.indexOf(c));
    return { time: Number(v >> 80n), random: v & ((1n << 80n) - 1n) };
  };

  it("encodes the time and 80 random bits in Crockford base32", () => {
    const id = createUlidFactory(() => 1_700_000_123_456)();
    expect(id).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
    expect(decode(id).time).toBe(1_700_000_123_456);
    expect(createUlidFactory(() => 0)().slice(0, 10)).toBe("0000000000");
    expect(createUlidFactory(() => 2 ** 48 - 1)().slice(0, 10)).toBe("7ZZZZZZZZZ");
  });

  it("increments the random part by one within a millisecond, carries included", () => {
    const next = createUlidFactory(() => 42);
    let previous = next();
    let prev = decode(previous);
    for (let i = 0; i < 50_000; i++) {
      const id = next();
      const cur = decode(id);
      expect(cur.time).toBe(42);
      expect(cur.random).toBe((prev.random + 1n) & ((1n << 80n) - 1n));
      if (cur.random !== 0n) expect(id > previous).toBe(true);
      previous = id;
      prev = cur;
    }
  });

  it("orders by time and draws new randomness each millisecond", () => {
    let t = 1_000;
    const next = createUlidFactory(() => t);
    const ids: string[] = [];
    for (let i = 0; i < 2_000; i++) {
      t += 1;
      ids.push(next());
    }
    expect([...ids].sort()).toEqual(ids);
    expect(new Set(ids.map((id) => id.slice(10))).size).toBe(ids.length);
  });
});
