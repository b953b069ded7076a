/**
 * Bundles on a real store (SQLite and PostgreSQL): versions issued by the store, strictly
 * increasing per agent even when two services (replicas) with skewed clocks build interleaved and
 * concurrent bundles for one agent; the size budget (an oversized bundle is not signed; a policy
 * change that would grow a bundle over it is refused, naming the agent); the choice of signing key
 * around a bundle-key rotation.
 */
import { randomBytes } from "node:crypto";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import pgClient from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { randomId } from "@moat/common";
import { BundleSchema, fromBinary } from "@moat/proto";
import { startPostgres, tempDir, type TestPostgres } from "@moat/testkit";
import { createInProcessBus } from "../bus.js";
import { createKeyring, type Keyring } from "../keys.js";
import { openStore, type Store } from "../store/index.js";
import { listMigrations, migratePostgres, migrateSqlite } from "../store/migrate.js";
import { createBundleService, type BundleService } from "./bundles.js";
import { createPolicyService, type PolicyService } from "./policies.js";

let pg: TestPostgres;
beforeAll(async () => {
  pg = await startPostgres();
}, 60_000);
afterAll(async () => pg?.stop());

const masterKey = randomBytes(32);

interface Replica {
  store: Store;
  keyring: Keyring;
  policies: PolicyService;
  bundles: BundleService;
}

/** One control-plane replica's services on the store at `url`, with its own clock. */
async function replica(url: string, options: { skewMs?: number; maxBytes?: number } = {}): Promise<Replica> {
  const store = await openStore(url);
  const now = () => new Date(Date.now() + (options.skewMs ?? 0));
  const bus = createInProcessBus(() => undefined);
  const keyring = createKeyring({ store, masterKey, now, bundleRetireAfterMs: 60_000 });
  let bundles: BundleService | undefined = undefined;
  const policies = createPolicyService({
    store,
    bus,
    checkBundles: (current, proposed) => (bundles as BundleService).checkBudget(current, proposed),
  });
  bundles = createBundleService({
    store,
    policies,
    keyring,
    now,
    validitySeconds: 3600,
    tokenIssuer: "moat",
    tokenAudience: "moat-agents",
    maxBytes: options.maxBytes ?? 1024 * 1024,
  });
  return { store, keyring, policies, bundles };
}

async function addAgent(store: Store, resources: { name: string; labels?: Record<string, string> }[]) {
  const id = randomId();
  const name = `edge-${randomId(6).toLowerCase()}`;
  await store.agents.create({
    id,
    name,
    description: "",
    enrolmentHash: "h",
    enrolmentExpiresAt: new Date(Date.now() + 60_000),
  });
  await store.resources.replaceForAgent(
    id,
    resources.map((r) => ({
      name: r.name,
      type: "postgres" as const,
      labels: r.labels ?? {},
      listenAddress: "",
      description: "",
    })),
    () => randomId(),
  );
  return { id, name };
}

function policy(name: string, resources: object, description = "") {
  return {
    apiVersion: "moat.dev/v1",
    kind: "Policy",
    metadata: { name, ...(description ? { description } : {}) },
    spec: {
      subjects: { users: ["*"] },
      resources,
      rules: [{ name: "r", effect: "allow", actions: ["connect"] }],
    },
  };
}

const providers: [string, () => string | Promise<string>][] = [
  ["sqlite", () => `file:${join(tempDir(), "moat.db")}`],
  ["postgres", () => pg.createDatabase(`bundles_${randomId(8).toLowerCase()}`)],
];

describe.each(providers)("bundles on %s", (_name, makeUrl) => {
  let url: string;
  let a: Replica;
  let b: Replica;

  beforeAll(async () => {
    url = await makeUrl();
    // Replica B's clock runs an hour behind A's: versions must not depend on either.
    a = await replica(url);
    b = await replica(url, { skewMs: -3600_000 });
  });
  afterAll(async () => {
    await a?.store.close();
    await b?.store.close();
  });

  it("two replicas issue strictly increasing versions for one agent, interleaved and concurrent", async () => {
    const agent = await addAgent(a.store, [{ name: `db-${randomId(6).toLowerCase()}` }]);
    const versions: bigint[] = [];
    for (let i = 0; i < 10; i++) {
      const built = await (i % 2 === 0 ? a : b).bundles.build(agent.id);
      if (built.kind !== "signed") throw new Error("unexpected oversized bundle");
      expect(fromBinary(BundleSchema, built.signed.payload).version).toBe(built.version);
      versions.push(built.version);
    }
    // Same policy revision throughout: replicas used to tell such bundles apart by their clocks.
    for (let i = 1; i < versions.length; i++) expect(versions[i]).toBeGreaterThan(versions[i - 1] as bigint);

    const burst = await Promise.all(
      Array.from({ length: 16 }, (_, i) => (i % 2 === 0 ? a : b).bundles.build(agent.id)),
    );
    const issued = burst.map((r) => r.version);
    expect(new Set(issued.map(String)).size).toBe(issued.length); // never the same version twice
    expect(issued.every((v) => v > (versions[versions.length - 1] as bigint))).toBe(true); // never an older one
    expect((await a.store.agents.findById(agent.id))?.bundleSeq).toBe(
      issued.reduce((max, v) => (v > max ? v : max), 0n),
    );
  });

  it("starts above the version an agent reports (a store restored from an older backup)", async () => {
    const agent = await addAgent(a.store, []);
    await a.store.agents.markConnected(
      agent.id,
      { version: "1", hostname: "h", connectedTo: "a", bundleVersion: 500n },
      new Date(),
    );
    expect((await a.bundles.build(agent.id)).version).toBe(501n);
  });

  it("signs with the oldest key until the agent is known to trust a newer one", async () => {
    const agent = await addAgent(a.store, [{ name: `db-${randomId(6).toLowerCase()}` }]);
    const first = await a.bundles.build(agent.id);
    if (first.kind !== "signed") throw new Error("unexpected oversized bundle");
    const oldKey = first.keyId;
    const rotated = await b.keyring.rotate("bundle");
    a.bundles.invalidate();
    const transition = await a.bundles.build(agent.id, { trustedKeyIds: new Set([oldKey]) });
    if (transition.kind !== "signed") throw new Error("unexpected oversized bundle");
    expect(transition.keyId).toBe(oldKey);
    expect(transition.bundleKeyIds).toEqual([oldKey, rotated.kid]);
    const unknown = await a.bundles.build(agent.id);
    expect(unknown.kind === "signed" && unknown.keyId).toBe(oldKey);
    const next = await a.bundles.build(agent.id, { trustedKeyIds: new Set(transition.bundleKeyIds) });
    expect(next.kind === "signed" && next.keyId).toBe(rotated.kid);
    expect(next.kind === "signed" && next.signed.keyId).toBe(rotated.kid);
  });
});

describe("upgrading to store-issued versions (migration 0005)", () => {
  const migrations = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "prisma", "migrations");
  /** A directory with the migrations of `provider` up to (and including) `last`. */
  function upTo(provider: string, last: string): string {
    const dir = tempDir();
    mkdirSync(dir, { recursive: true });
    for (const m of listMigrations(join(migrations, provider)).filter((m) => m.name <= last))
      copyFileSync(join(migrations, provider, `${m.name}.sql`), join(dir, `${m.name}.sql`));
    return dir;
  }
  const seed = [
    `INSERT INTO "Counter" ("name", "value") VALUES ('policy.revision', 9)`,
    `INSERT INTO "Agent" ("id", "name", "bundleVersion", "updatedAt") VALUES ('a1', 'old-edge', 7, CURRENT_TIMESTAMP)`,
  ];

  it("starts every agent's sequence above any version issued before (SQLite)", () => {
    const file = join(tempDir(), "moat.db");
    migrateSqlite(file, upTo("sqlite", "0004_audit_events"));
    const db = new Database(file);
    for (const sql of seed) db.exec(sql);
    db.close();
    expect(migrateSqlite(file, upTo("sqlite", "0005_identity_binding"))).toEqual(["0005_identity_binding"]);
    const after = new Database(file);
    expect(after.prepare('SELECT "bundleSeq", "policyRevision" FROM "Agent"').get()).toEqual({
      bundleSeq: 9,
      policyRevision: 7,
    });
    after.close();
  });

  it("starts every agent's sequence above any version issued before (PostgreSQL)", async () => {
    const url = await pg.createDatabase(`upgrade_${randomId(8).toLowerCase()}`);
    await migratePostgres(url, upTo("postgres", "0004_audit_events"));
    const client = new pgClient.Client({ connectionString: url });
    await client.connect();
    try {
      for (const sql of seed) await client.query(sql);
      expect(await migratePostgres(url, upTo("postgres", "0005_identity_binding"))).toEqual(["0005_identity_binding"]);
      const { rows } = await client.query(
        'SELECT "bundleSeq"::text AS seq, "policyRevision"::text AS rev FROM "Agent"',
      );
      expect(rows).toEqual([{ seq: "9", rev: "7" }]);
    } finally {
      await client.end();
    }
  });
});

describe("the bundle size budget", () => {
  let r: Replica;
  const budget = 4096;

  beforeAll(async () => {
    r = await replica(`file:${join(tempDir(), "moat.db")}`, { maxBytes: budget });
  });
  /** Builds from the current policies (this test has no bus to drop the cached ones after a change). */
  const build = (agentId: string) => {
    r.bundles.invalidate();
    return r.bundles.build(agentId);
  };
  afterAll(async () => r?.store.close());

  it("does not sign an oversized bundle, and refuses policy writes that would make one, naming the agents", async () => {
    const small = await addAgent(r.store, [{ name: "small-db", labels: { size: "small" } }]);
    const big = await addAgent(r.store, [{ name: "big-db", labels: { size: "big" } }]);
    const long = "x".repeat(900);
    // Up to the budget: accepted.
    for (let i = 0; i < 3; i++) await r.policies.put(policy(`big-${i}`, { labels: { size: "big" } }, long), "test");
    const fits = await build(big.id);
    expect(fits.kind).toBe("signed");
    // Past it: refused up front, naming the agent whose bundle would not fit.
    const refused = r.policies.put(policy("big-3", { labels: { size: "big" } }, long), "test");
    await expect(refused).rejects.toMatchObject({
      code: "bundle_too_large",
      message: expect.stringContaining(big.name),
      fields: [{ field: `agents/${big.name}`, message: expect.stringContaining("bytes") }],
    });
    const applied = r.policies.apply(
      [policy("big-3", { labels: { size: "big" } }, long), policy("big-4", { labels: { size: "big" } }, long)],
      { prune: false, dryRun: true },
      "test",
    );
    await expect(applied).rejects.toMatchObject({ code: "bundle_too_large" });
    expect((await r.policies.list()).map((p) => p.name)).toEqual(["big-0", "big-1", "big-2"]);
    // Another agent's policies are not held back by it.
    await r.policies.put(policy("small-0", { labels: { size: "small" } }, long), "test");

    // A bundle that grows past the budget without a policy write (a resource announced later) is
    // built but not signed; its version is spent.
    await r.store.resources.replaceForAgent(
      small.id,
      [
        { name: "small-db", type: "postgres", labels: { size: "small" }, listenAddress: "", description: "" },
        { name: "small-big", type: "postgres", labels: { size: "big" }, listenAddress: "", description: "" },
      ],
      () => randomId(),
    );
    const over = await build(small.id);
    expect(over).toMatchObject({ kind: "too_large", budget, policies: 4 });
    expect(over.kind === "too_large" && over.bytes).toBeGreaterThan(budget);
    // A change that shrinks it is allowed, although the bundle is still over the budget.
    await r.policies.put(policy("small-0", { labels: { size: "small" } }, "x".repeat(800)), "test");
    const smaller = await build(small.id);
    expect(smaller.kind).toBe("too_large");
    expect(smaller.kind === "too_large" && smaller.bytes).toBeLessThan(over.kind === "too_large" ? over.bytes : 0);
    await r.policies.remove("small-0", "test");
    expect((await build(small.id)).kind).toBe("signed");
  });
});
