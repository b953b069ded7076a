import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { create, SignedBundleSchema, type SignedBundle } from "@moat/proto";
import { tempDir } from "@moat/testkit";
import { createBundleHolder } from "./bundle.js";
import { keyPair, NOW, signedBundle, type BundleOptions, type TestKey } from "./test-support/bundles.js";

function bundle(key: TestKey, o: BundleOptions = {}): SignedBundle {
  return signedBundle(key, o);
}

function setup() {
  const key = keyPair("k1");
  const dataDir = tempDir();
  const holder = createBundleHolder({ agentId: "agent1", dataDir, trustedKeys: [key.trusted], now: () => NOW });
  return { key, dataDir, holder };
}

const read = (holder: ReturnType<typeof setup>["holder"], extra: object = {}) =>
  holder.decide({
    user: "u@example.com",
    groups: ["eng"],
    resource: "db",
    action: "db:read",
    now: NOW.getTime(),
    ...extra,
  });

describe("bundle verification", () => {
  it("denies everything, saying why, before any bundle arrives", () => {
    const { holder } = setup();
    expect(read(holder)).toMatchObject({
      effect: "deny",
      message: expect.stringContaining("has not received a policy bundle"),
    });
  });

  it("applies a valid bundle, persists it, and a restart loads it", () => {
    const { key, dataDir, holder } = setup();
    expect(holder.apply(bundle(key), NOW)).toEqual({ applied: true, version: 1n });
    expect(read(holder)).toMatchObject({ effect: "allow", rule: "p/read" });
    expect(read(holder, { action: "db:write" }).effect).toBe("deny");
    const restarted = createBundleHolder({ agentId: "agent1", dataDir, trustedKeys: [key.trusted], now: () => NOW });
    expect(restarted.loadPersisted()).toEqual({ applied: true, version: 1n });
    expect(read(restarted).effect).toBe("allow");
  });

  it.each([
    [
      "a flipped payload byte",
      (s: SignedBundle) => (
        (s.payload = Uint8Array.from(s.payload)),
        (s.payload[10] = (s.payload[10] as number) ^ 1),
        s
      ),
      "bad signature",
    ],
    [
      "a flipped signature byte",
      (s: SignedBundle) => (
        (s.signature = Uint8Array.from(s.signature)),
        (s.signature[0] = (s.signature[0] as number) ^ 1),
        s
      ),
      "bad signature",
    ],
    ["an unknown key id", (s: SignedBundle) => ((s.keyId = "nope"), s), "unknown key"],
    ["another algorithm", (s: SignedBundle) => ((s.algorithm = "none"), s), "unsupported signature algorithm"],
  ])("rejects %s and keeps the previous bundle", (_name, tamper, error) => {
    const { key, holder } = setup();
    holder.apply(bundle(key), NOW);
    const bad = tamper(bundle(key, { version: 2n, policies: [] }));
    expect(holder.apply(bad, NOW)).toMatchObject({ applied: false, error: expect.stringContaining(error) });
    expect(holder.current()?.version).toBe(1n);
    expect(read(holder).effect).toBe("allow");
  });

  it("flips every byte of a bundle in turn: each is rejected or harmless, never a crash", () => {
    const { key, holder } = setup();
    holder.apply(bundle(key), NOW);
    const good = bundle(key, { version: 2n, issuedAt: new Date(NOW.getTime() + 1) });
    for (let i = 0; i < good.payload.length; i++) {
      const copy = create(SignedBundleSchema, { ...good, payload: Uint8Array.from(good.payload) });
      copy.payload[i] = (copy.payload[i] as number) ^ 0xff;
      expect(holder.apply(copy, NOW).applied).toBe(false);
    }
    expect(holder.current()?.version).toBe(1n);
  });

  it("rejects rollback and replay, accepts a refresh of the same version", () => {
    const { key, holder } = setup();
    expect(holder.apply(bundle(key, { version: 5n }), NOW).applied).toBe(true);
    expect(holder.apply(bundle(key, { version: 4n, issuedAt: new Date(NOW.getTime() + 1000) }), NOW)).toMatchObject({
      applied: false,
      error: expect.stringContaining("rollback"),
    });
    expect(holder.apply(bundle(key, { version: 5n }), NOW)).toMatchObject({
      applied: false,
      error: expect.stringContaining("replay"),
    });
    expect(holder.apply(bundle(key, { version: 5n, issuedAt: new Date(NOW.getTime() + 1000) }), NOW).applied).toBe(
      true,
    );
  });

  it("rejects a bundle for another agent, an expired one, and one with an invalid policy", () => {
    const { key, holder } = setup();
    expect(holder.apply(bundle(key, { agentId: "agent2" }), NOW)).toMatchObject({
      applied: false,
      error: expect.stringContaining("another agent"),
    });
    expect(holder.apply(bundle(key, { issuedAt: new Date(NOW.getTime() - 7200_000) }), NOW)).toMatchObject({
      applied: false,
      error: "already expired",
    });
    expect(holder.apply(bundle(key, { policies: ['{"apiVersion":"moat.dev/v1"}'] }), NOW)).toMatchObject({
      applied: false,
      error: expect.stringContaining("invalid"),
    });
    expect(holder.apply(bundle(key, { policies: ["{not json"] }), NOW)).toMatchObject({
      applied: false,
      error: expect.stringContaining("not JSON"),
    });
    expect(holder.current()).toBeUndefined();
  });

  it("rotates bundle keys through a bundle signed by the old key", () => {
    const { key, holder } = setup();
    const next = keyPair("k2");
    expect(holder.apply(bundle(next, { version: 1n }), NOW).applied).toBe(false);
    expect(holder.apply(bundle(key, { version: 1n, bundleKeys: [key.trusted, next.trusted] }), NOW).applied).toBe(true);
    expect(holder.apply(bundle(next, { version: 2n, bundleKeys: [next.trusted] }), NOW).applied).toBe(true);
    expect(holder.apply(bundle(key, { version: 3n }), NOW)).toMatchObject({
      applied: false,
      error: expect.stringContaining("unknown key"),
    });
  });

  it("fails closed when the bundle expires, for unknown resources and disabled users", () => {
    const { key, holder } = setup();
    holder.apply(bundle(key, { ttlMs: 60_000, disabled: ["Mallory@example.com"] }), NOW);
    expect(read(holder, { now: NOW.getTime() + 59_000 }).effect).toBe("allow");
    expect(read(holder, { now: NOW.getTime() + 60_000 })).toMatchObject({
      effect: "deny",
      message: expect.stringContaining("expired"),
    });
    expect(read(holder, { resource: "other" })).toMatchObject({
      effect: "deny",
      message: expect.stringContaining('"other" is not in'),
    });
    expect(read(holder, { user: "mallory@example.com" })).toMatchObject({
      effect: "deny",
      message: expect.stringContaining("disabled"),
    });
  });

  it("does not trust a damaged bundle file", () => {
    const { key, dataDir } = setup();
    writeFileSync(join(dataDir, "bundle.pb"), "garbage");
    const holder = createBundleHolder({ agentId: "agent1", dataDir, trustedKeys: [key.trusted], now: () => NOW });
    expect(holder.loadPersisted()).toMatchObject({ applied: false });
    expect(read(holder).effect).toBe("deny");
  });
});
