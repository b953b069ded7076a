import { createHmac, generateKeyPairSync } from "node:crypto";
import { SignJWT, type JWTPayload } from "jose";
import { beforeEach, describe, expect, it } from "vitest";
import { tempDir } from "@moat/testkit";
import { createBundleHolder, type ActiveBundle } from "./bundle.js";
import { keyPair, NOW, signedBundle, type TestKey } from "./test-support/bundles.js";
import { TokenRejected, verifyAccessToken } from "./tokens.js";

const bundleKey = keyPair("bundle-1");
const tokenKey = keyPair("token-1");
let bundle: ActiveBundle;

function activate(o: { revoked?: string[]; disabled?: string[]; tokenKeys?: TestKey[] } = {}): ActiveBundle {
  const holder = createBundleHolder({
    agentId: "agent1",
    dataDir: tempDir(),
    trustedKeys: [bundleKey.trusted],
    now: () => NOW,
  });
  const result = holder.apply(
    signedBundle(bundleKey, {
      tokenKeys: (o.tokenKeys ?? [tokenKey]).map((k) => k.trusted),
      revoked: o.revoked ?? [],
      disabled: o.disabled ?? [],
    }),
    NOW,
  );
  expect(result.applied).toBe(true);
  return holder.current() as ActiveBundle;
}

const nowSeconds = Math.floor(NOW.getTime() / 1000);

async function token(claims: JWTPayload = {}, o: { key?: TestKey; header?: object } = {}): Promise<string> {
  const key = o.key ?? tokenKey;
  return new SignJWT({ groups: ["eng"], kind: "user", ...claims })
    .setProtectedHeader({ alg: "EdDSA", kid: key.kid, typ: "JWT", ...o.header })
    .setIssuer((claims.iss as string) ?? "moat")
    .setAudience((claims.aud as string) ?? "moat-agents")
    .setSubject((claims.sub as string) ?? "alice@example.com")
    .setJti((claims.jti as string) ?? "tok-1")
    .setIssuedAt((claims.iat as number) ?? nowSeconds - 10)
    .setNotBefore((claims.nbf as number) ?? nowSeconds - 10)
    .setExpirationTime((claims.exp as number) ?? nowSeconds + 900)
    .sign(key.privateKey);
}

const b64 = (value: object | string) =>
  Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

async function rejected(value: string, ...with_: [ActiveBundle | undefined] | []): Promise<string> {
  try {
    await verifyAccessToken(value, with_.length > 0 ? with_[0] : bundle, NOW);
  } catch (error) {
    expect(error).toBeInstanceOf(TokenRejected);
    return (error as Error).message;
  }
  throw new Error("token was accepted");
}

beforeEach(() => {
  bundle = activate();
});

describe("access token verification at the agent", () => {
  it("accepts a valid token and reads the identity", async () => {
    const identity = await verifyAccessToken(await token(), bundle, NOW);
    expect(identity).toMatchObject({
      user: "alice@example.com",
      groups: ["eng"],
      serviceAccount: false,
      tokenId: "tok-1",
    });
  });

  it("reads service accounts", async () => {
    expect(
      (await verifyAccessToken(await token({ kind: "service-account", sub: "etl" }), bundle, NOW)).serviceAccount,
    ).toBe(true);
  });

  it("rejects alg none", async () => {
    const header = b64({ alg: "none", typ: "JWT" });
    const payload = b64({
      iss: "moat",
      aud: "moat-agents",
      sub: "alice@example.com",
      jti: "x",
      iat: nowSeconds,
      nbf: nowSeconds,
      exp: nowSeconds + 900,
    });
    expect(await rejected(`${header}.${payload}.`)).toBe("the access token is invalid");
  });

  it("rejects HS256 signed with the public key (algorithm confusion)", async () => {
    const header = b64({ alg: "HS256", typ: "JWT", kid: tokenKey.kid });
    const payload = b64({
      iss: "moat",
      aud: "moat-agents",
      sub: "alice@example.com",
      jti: "x",
      iat: nowSeconds,
      nbf: nowSeconds,
      exp: nowSeconds + 900,
      groups: ["admins"],
    });
    const publicJwk = JSON.stringify(tokenKey.trusted.jwk);
    const signature = createHmac("sha256", publicJwk).update(`${header}.${payload}`).digest("base64url");
    expect(await rejected(`${header}.${payload}.${signature}`)).toBe("the access token is invalid");
    const xSignature = createHmac("sha256", Buffer.from(tokenKey.trusted.jwk.x ?? "", "base64url"))
      .update(`${header}.${payload}`)
      .digest("base64url");
    expect(await rejected(`${header}.${payload}.${xSignature}`)).toBe("the access token is invalid");
  });

  it("rejects expired and not-yet-valid tokens", async () => {
    expect(
      await rejected(await token({ exp: nowSeconds - 60, iat: nowSeconds - 1000, nbf: nowSeconds - 1000 })),
    ).toContain("expired");
    expect(await rejected(await token({ nbf: nowSeconds + 600, iat: nowSeconds }))).toContain("nbf");
  });

  it("rejects a wrong audience or issuer", async () => {
    expect(await rejected(await token({ aud: "someone-else" }))).toContain("aud");
    expect(await rejected(await token({ iss: "https://evil.example" }))).toContain("iss");
  });

  it("rejects an unknown kid and a key the bundle does not carry", async () => {
    const stranger = keyPair("token-1"); // same kid, different key
    expect(await rejected(await token({}, { key: stranger }))).toBe("the access token is invalid");
    const other = keyPair("other");
    expect(await rejected(await token({}, { key: other }))).toBe("the access token is invalid");
  });

  it("rejects a tampered payload", async () => {
    const [h, , s] = (await token()).split(".");
    const forged = b64({
      iss: "moat",
      aud: "moat-agents",
      sub: "root@example.com",
      jti: "x",
      iat: nowSeconds,
      nbf: nowSeconds,
      exp: nowSeconds + 900,
    });
    expect(await rejected(`${h}.${forged}.${s}`)).toBe("the access token is invalid");
  });

  it("rejects revoked token ids and disabled users from the bundle", async () => {
    bundle = activate({ revoked: ["tok-1"], disabled: ["mallory@example.com"] });
    expect(await rejected(await token())).toBe("the access token has been revoked");
    expect(await rejected(await token({ sub: "Mallory@example.com", jti: "tok-2" }))).toContain("disabled");
  });

  it("rejects everything without a bundle or with an expired one", async () => {
    expect(await rejected(await token(), undefined)).toContain("no policy bundle");
    const expired = { ...bundle, notAfter: new Date(NOW.getTime() - 1) };
    expect(await rejected(await token(), expired)).toContain("expired");
  });

  it("rejects garbage without crashing", async () => {
    for (const value of ["", "a", "a.b", "a.b.c", "....", "x".repeat(10_000), `${b64("{")}.${b64("{")}.x`]) {
      await rejected(value);
    }
  });

  it("accepts tokens from every key of a rotation (old key kept until its tokens expire)", async () => {
    const next = keyPair("token-2");
    bundle = activate({ tokenKeys: [tokenKey, next] });
    await verifyAccessToken(await token(), bundle, NOW);
    await verifyAccessToken(await token({}, { key: next }), bundle, NOW);
  });

  it("keys generated elsewhere (RSA) are not accepted even if listed", async () => {
    const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const rsaToken = await new SignJWT({})
      .setProtectedHeader({ alg: "RS256", kid: "token-1" })
      .setIssuer("moat")
      .setAudience("moat-agents")
      .setSubject("a")
      .setJti("j")
      .setIssuedAt()
      .setNotBefore(nowSeconds - 1)
      .setExpirationTime(nowSeconds + 60)
      .sign(privateKey);
    expect(await rejected(rsaToken)).toBe("the access token is invalid");
  });
});
