import { rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hashSecret, randomId } from "@moat/common";
import { startPostgres, tempDir, type TestPostgres } from "@moat/testkit";
import { openStore, REVOKED_TOKENS_KEPT_MS, type Store } from "./index.js";

let pg: TestPostgres;
const dirs: string[] = [];

beforeAll(async () => {
  pg = await startPostgres();
}, 60_000);

afterAll(async () => {
  await pg?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const providers: [string, () => Promise<string>][] = [
  [
    "sqlite",
    async () => {
      const dir = tempDir();
      dirs.push(dir);
      return `file:${join(dir, "moat.db")}`;
    },
  ],
  ["postgres", async () => pg.createDatabase(`store_${randomId(8)}`)],
];

describe.each(providers)("store on %s", (_name, makeUrl) => {
  let store: Store;
  let url: string;

  beforeAll(async () => {
    url = await makeUrl();
    const opened = await openStore(url);
    expect(opened.migrationsApplied).toEqual([
      "0001_init",
      "0002_policies_and_keys",
      "0003_identities",
      "0004_audit_events",
      "0005_identity_binding",
      "0006_audit_sessions",
    ]);
    store = opened;
  });
  afterAll(async () => store?.close());

  it("applies migrations once (a second open applies none)", async () => {
    const again = await openStore(url);
    expect(again.migrationsApplied).toEqual([]);
    await again.close();
  });

  it("answers ping", async () => {
    await expect(store.ping()).resolves.toBeUndefined();
  });

  it("creates users and rejects a duplicate email as a conflict", async () => {
    await store.users.create({ id: randomId(), email: "a@example.com", displayName: "A", role: "admin" });
    await expect(
      store.users.create({ id: randomId(), email: "a@example.com", displayName: "A2", role: "member" }),
    ).rejects.toMatchObject({ code: "conflict" });
    expect(await store.users.count()).toBe(1);
  });

  it("revokes a user's tokens expired less than a day ago too, and lists them for bundles (review 63)", async () => {
    const user = await store.users.create({ id: randomId(), email: "t@example.com", displayName: "T", role: "member" });
    const at = new Date();
    const token = async (expiredMs: number) => {
      const id = randomId();
      const expiresAt = new Date(at.getTime() - expiredMs);
      await store.accessTokens.create({ id, userId: user.id, source: "login", issuedAt: at, expiresAt });
      return id;
    };
    const live = await token(-60_000);
    const recent = await token(3600_000);
    const old = await token(REVOKED_TOKENS_KEPT_MS + 60_000);
    await store.accessTokens.revokeAllOf(user.id, at);
    const listed = await store.accessTokens.revokedUnexpired(new Date(at.getTime() - REVOKED_TOKENS_KEPT_MS));
    expect(listed.sort()).toEqual([live, recent].sort());
    expect((await store.accessTokens.findById(old))?.revokedAt).toBeNull();
  });

  it("keeps agent names unique among active agents only", async () => {
    const expires = new Date(Date.now() + 60_000);
    const a = await store.agents.create({
      id: randomId(),
      name: "edge",
      description: "",
      enrolmentHash: "h1",
      enrolmentExpiresAt: expires,
    });
    await expect(
      store.agents.create({
        id: randomId(),
        name: "edge",
        description: "",
        enrolmentHash: "h2",
        enrolmentExpiresAt: expires,
      }),
    ).rejects.toMatchObject({ code: "conflict" });
    await store.agents.revoke(a.id, new Date());
    const b = await store.agents.create({
      id: randomId(),
      name: "edge",
      description: "",
      enrolmentHash: "h3",
      enrolmentExpiresAt: expires,
    });
    expect((await store.agents.listActive()).map((x) => x.id)).toEqual([b.id]);
    expect((await store.agents.findById(a.id))?.revokedAt).toBeInstanceOf(Date);
  });

  it("completes an enrolment only once (compare-and-swap on the secret hash)", async () => {
    const id = randomId();
    await store.agents.create({
      id,
      name: `e-${id}`,
      description: "",
      enrolmentHash: hashSecret("s"),
      enrolmentExpiresAt: new Date(),
    });
    const details = { version: "1", hostname: "h" };
    const results = await Promise.all([
      store.agents.completeEnrolment(id, hashSecret("s"), hashSecret("c1"), details, new Date()),
      store.agents.completeEnrolment(id, hashSecret("s"), hashSecret("c2"), details, new Date()),
    ]);
    expect(results.filter(Boolean)).toHaveLength(1);
    const agent = await store.agents.findById(id);
    expect(agent?.enrolmentHash).toBeNull();
    expect([hashSecret("c1"), hashSecret("c2")]).toContain(agent?.credentialHash);
  });

  it("replaces an agent's resources and refuses names another agent holds", async () => {
    const expires = new Date(Date.now() + 60_000);
    const one = await store.agents.create({
      id: randomId(),
      name: `one-${randomId(6)}`,
      description: "",
      enrolmentHash: "x",
      enrolmentExpiresAt: expires,
    });
    const two = await store.agents.create({
      id: randomId(),
      name: `two-${randomId(6)}`,
      description: "",
      enrolmentHash: "y",
      enrolmentExpiresAt: expires,
    });
    const r = (name: string) => ({
      name,
      type: "postgres" as const,
      labels: { env: "prod" },
      listenAddress: "127.0.0.1:6432",
      description: "",
    });
    expect(await store.resources.replaceForAgent(one.id, [r("db-a"), r("db-b")], () => randomId())).toEqual({
      accepted: ["db-a", "db-b"],
      rejected: [],
    });
    const second = await store.resources.replaceForAgent(two.id, [r("db-b"), r("db-c")], () => randomId());
    expect(second.accepted).toEqual(["db-c"]);
    expect(second.rejected.map((x) => x.name)).toEqual(["db-b"]);
    await store.resources.replaceForAgent(one.id, [r("db-a")], () => randomId());
    const all = await store.resources.list();
    expect(all.map((x) => [x.name, x.agentId])).toEqual([
      ["db-a", one.id],
      ["db-c", two.id],
    ]);
    expect(all[0]?.labels).toEqual({ env: "prod" });
    await store.agents.revoke(one.id, new Date());
    expect((await store.resources.list()).map((x) => x.name)).toEqual(["db-c"]);
  });

  it("settings: first writer wins", async () => {
    expect(await store.settings.setIfAbsent("k", "v1")).toBe("v1");
    expect(await store.settings.setIfAbsent("k", "v2")).toBe("v1");
    expect(await store.settings.get("k")).toBe("v1");
    expect(await store.settings.get("missing")).toBeUndefined();
  });
});
