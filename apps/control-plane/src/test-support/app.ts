/**
 * Test support (not built into dist/): a REST app over a real SQLite store in a temp dir, with a
 * user and API key per role, for `app.inject` tests.
 */
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { createLogger, generateSecret, randomId, SecretKind } from "@moat/common";
import { tempDir } from "@moat/testkit";
import { createInProcessBus, type EventBus } from "../bus.js";
import { buildHttpApp } from "../http/app.js";
import { createMetrics } from "../metrics.js";
import { createAgentService } from "../services/agents.js";
import { createKeyring, type Keyring } from "../keys.js";
import { createIdentityService } from "../services/identity.js";
import { createTokenService, type TokenService } from "../services/tokens.js";
import { createPolicyService } from "../services/policies.js";
import { createAuditService } from "../services/audit.js";
import { openStore, ROLES, type Role, type Store } from "../store/index.js";

export interface TestApp {
  tokens: TokenService;
  keyring: Keyring;
  app: Awaited<ReturnType<typeof buildHttpApp>>;
  store: Store;
  /** The store's SQLite file (tests that tamper with stored rows open it directly). */
  dbFile: string;
  bus: EventBus;
  keys: Record<Role, string>;
  emails: Record<Role, string>;
  auth(role: Role): { authorization: string };
  close(): Promise<void>;
}

export async function createTestApp(): Promise<TestApp> {
  const dbFile = join(tempDir(), "moat.db");
  const store = await openStore(`file:${dbFile}`);
  const now = () => new Date();
  const bus = createInProcessBus(() => undefined);
  const keyring = createKeyring({ store, masterKey: randomBytes(32), activationDelayMs: 200, retireAfterMs: 1000 });
  const tokens = createTokenService({
    store,
    keyring,
    bus,
    now,
    issuer: "moat",
    audience: "moat-agents",
    apiAudience: "moat-api",
    ttlSeconds: 900,
  });
  const identity = createIdentityService({ store, tokens, bus, now });
  const agents = createAgentService({
    store,
    bus,
    now,
    endpoint: () => "127.0.0.1:7071",
    caFingerprint: "a".repeat(64),
    enrolmentTtlMs: 60_000,
    staleAfterMs: 30_000,
  });
  const app = await buildHttpApp({
    logger: createLogger({ name: "test", level: "silent" }),
    store,
    identity,
    tokens,
    keyring,
    bus,
    agents,
    policies: createPolicyService({ store, bus }),
    audit: createAuditService({ store }),
    metrics: createMetrics({ defaultMetrics: false }),
    isReady: () => true,
    version: "0.0.0-test",
    replicaId: "test",
  });
  const keys = {} as Record<Role, string>;
  const emails = {} as Record<Role, string>;
  for (const role of ROLES) {
    const email = `${role}-${randomId(4)}@example.com`;
    const user = await store.users.create({ id: randomId(), email, displayName: role, role });
    const key = generateSecret(SecretKind.apiKey);
    await store.apiKeys.create({ id: key.id, name: "test", hash: key.hash, userId: user.id });
    keys[role] = key.value;
    emails[role] = email;
  }
  return {
    app,
    tokens,
    keyring,
    store,
    dbFile,
    bus,
    keys,
    emails,
    auth: (role) => ({ authorization: `Bearer ${keys[role]}` }),
    async close() {
      await app.close();
      await store.close();
    },
  };
}
