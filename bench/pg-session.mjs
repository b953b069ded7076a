#!/usr/bin/env node
// The agent's own JavaScript per Postgres statement, without the network: one PgSession (from
// apps/agent/dist) between two fake sockets, fed pgbench's select-only statement and PostgreSQL's
// answer to it, with the real classifier and its cache, a signed bundle, the policy engine, the
// audit recorder and its spool (on disk: written each event-loop turn, fsynced within 5 ms, as in
// the agent). What a proxy costs beyond reading and writing its sockets, with hot caches: in the
// real process, sharing cores with PostgreSQL and pgbench, the same work costs several times more
// (bench/pg-proxy.mjs measures that, side by side with other proxies).
//
// Each mode runs --statements statements in batches of 100 (one event-loop turn between batches,
// timed: the audit events of a batch are encoded and spooled in it) and prints the mean, p10 and
// p50 per statement over the batches after the first fifth (warm-up).
//
//   simple     Query 'SELECT abalance FROM pgbench_accounts WHERE aid = N;' (a new N each time)
//   extended   Parse/Bind/Describe/Execute/Sync of the same with $1 (pgbench -M extended)
//   masked     simple, on a resource whose policy masks a column and runs the email detector
//
// Run: pnpm exec turbo run build && node bench/pg-session.mjs [--statements N] [--modes LIST]
//      (add --cpu-prof to node's flags to profile it)
import { generateKeyPairSync, sign } from "node:crypto";
import { EventEmitter } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = (path) => import(join(ROOT, path));
const { createLogger } = await dist("packages/common/dist/index.js");
const { commandComplete, dataRow, readyForQuery, rowDescription, serialize } = await dist(
  "packages/pg-wire/dist/index.js",
);
const { createClassifier, loadSqlParser } = await dist("packages/sql/dist/index.js");
const { BundleSchema, create, ResourceType, SignedBundleSchema, timestampFromDate, toBinary } =
  await dist("packages/proto/dist/index.js");
const { createBundleHolder } = await dist("apps/agent/dist/bundle.js");
const { AuditSpool } = await dist("apps/agent/dist/audit/spool.js");
const { createAuditRecorder } = await dist("apps/agent/dist/audit/recorder.js");
const { PgSession } = await dist("apps/agent/dist/pg/session.js");

const { values: args } = parseArgs({
  options: {
    statements: { type: "string", default: "200000" },
    modes: { type: "string", default: "simple,extended,masked" },
    batch: { type: "string", default: "100" },
  },
});
const STATEMENTS = Number(args.statements);
const MODES = args.modes.split(",");
const BATCH = Number(args.batch);

/** A socket that takes every write and lets the bench emit what it "receives". */
class FakeSocket extends EventEmitter {
  write() {
    return true;
  }
  cork() {}
  uncork() {}
  pause() {
    return this;
  }
  resume() {
    return this;
  }
  end() {
    return this;
  }
  destroySoon() {}
}

await loadSqlParser();
const dataDir = mkdtempSync(join(tmpdir(), "moat-pg-session-bench-"));
const { publicKey, privateKey } = generateKeyPairSync("ed25519");
const trusted = { keyId: "bench", algorithm: "EdDSA", jwk: { ...publicKey.export({ format: "jwk" }), kid: "bench" } };
const bundles = createBundleHolder({ agentId: "agent1", dataDir, trustedKeys: [trusted] });
const policy = (name, resource, masking) => ({
  apiVersion: "moat.dev/v1",
  kind: "Policy",
  metadata: { name },
  spec: {
    subjects: { groups: ["eng"] },
    resources: { names: [resource] },
    rules: [{ name: "all", effect: "allow", actions: ["connect", "db:*"] }],
    ...(masking ? { masking } : {}),
  },
});
const now = new Date();
const payload = toBinary(
  BundleSchema,
  create(BundleSchema, {
    agentId: "agent1",
    version: 1n,
    issuedAt: timestampFromDate(now),
    notAfter: timestampFromDate(new Date(now.getTime() + 3600_000)),
    resources: [
      { name: "db", type: ResourceType.POSTGRES, labels: [] },
      { name: "db-masked", type: ResourceType.POSTGRES, labels: [] },
    ],
    policyDocuments: [
      JSON.stringify(policy("plain", "db")),
      JSON.stringify(
        policy("masked", "db-masked", [
          { columns: ["filler"], style: "full" },
          { detectors: ["email"], style: "partial" },
        ]),
      ),
    ],
    tokenIssuer: "moat",
    tokenAudience: "moat-agents",
  }),
);
const applied = bundles.apply(
  create(SignedBundleSchema, {
    payload,
    signature: sign(null, payload, privateKey),
    keyId: "bench",
    algorithm: "Ed25519",
  }),
  now,
);
if (!applied.applied) throw new Error(applied.error);
const { spool } = AuditSpool.open({ dir: join(dataDir, "audit"), maxBytes: 1 << 30 });
const audit = createAuditRecorder({ spool, bundleVersion: () => 1n });
const classifier = createClassifier();
const logger = createLogger({ name: "bench", level: "silent" });

function session(resource) {
  const client = new FakeSocket();
  const target = new FakeSocket();
  const identity = { user: "alice@example.com", groups: ["eng"], serviceAccount: false, tokenId: "t1", expiresAt: now };
  const ctx = {
    sessionId: `bench-${resource}`,
    resource,
    identity,
    sourceAddress: "127.0.0.1",
    targetUser: "postgres",
  };
  const s = new PgSession(
    {
      ...ctx,
      database: "bench",
      bundles,
      audit,
      classifier,
      logger,
      maxMessageBytes: 1 << 26,
      metrics: { statement() {} },
    },
    client,
    target,
    { searchPath: ["public"], parameters: new Map() },
  );
  s.start(Buffer.alloc(0));
  return { client, target };
}

// PostgreSQL's answers (the RowDescription names no table: no catalog lookups here).
const rows = [
  rowDescription([
    { name: "abalance", tableOid: 0, columnNumber: 0, typeOid: 23, typeSize: 4, typeModifier: -1, format: 0 },
  ]),
  dataRow([Buffer.from("0")]),
  commandComplete("SELECT 1"),
  readyForQuery("I"),
];
const simpleAnswer = Buffer.concat(rows);
const parseBindComplete = Buffer.from([0x31, 0, 0, 0, 4, 0x32, 0, 0, 0, 4]);
const extendedAnswer = Buffer.concat([parseBindComplete, ...rows]);
const aid = (i) => String((i * 7919) % 1_000_000);
const simple = Array.from({ length: 997 }, (_, i) =>
  serialize.query(`SELECT abalance FROM pgbench_accounts WHERE aid = ${aid(i)};`),
);
const extended = Array.from({ length: 997 }, (_, i) =>
  Buffer.concat([
    serialize.parse({ text: "SELECT abalance FROM pgbench_accounts WHERE aid = $1;", types: [] }),
    serialize.bind({ values: [aid(i)] }),
    serialize.describe({ type: "P", name: "" }),
    serialize.execute({}),
    serialize.sync(),
  ]),
);

const turn = () => new Promise((resolve) => setImmediate(resolve));

async function measure(mode) {
  const s = session(mode === "masked" ? "db-masked" : "db");
  const [messages, answer] = mode === "extended" ? [extended, extendedAnswer] : [simple, simpleAnswer];
  const perBatch = [];
  let next = 0;
  for (let done = 0; done < STATEMENTS; done += BATCH) {
    const started = process.hrtime.bigint();
    for (let i = 0; i < BATCH; i++) {
      s.client.emit("data", messages[next++ % messages.length]);
      s.target.emit("data", answer);
    }
    await turn();
    if (done >= STATEMENTS / 5) perBatch.push(Number(process.hrtime.bigint() - started) / BATCH / 1000);
  }
  perBatch.sort((a, b) => a - b);
  const at = (q) => perBatch[Math.floor(perBatch.length * q)].toFixed(1);
  const mean = perBatch.reduce((a, b) => a + b, 0) / perBatch.length;
  return { mode, mean: mean.toFixed(1), p10: at(0.1), p50: at(0.5) };
}

console.log(`pg-session: ${STATEMENTS} statements per mode, node ${process.version}; µs per statement`);
console.log("mode        mean   p10   p50");
for (const mode of MODES) {
  const r = await measure(mode);
  console.log(`${r.mode.padEnd(10)} ${r.mean.padStart(5)} ${r.p10.padStart(5)} ${r.p50.padStart(5)}`);
}
spool.close();
rmSync(dataDir, { recursive: true, force: true });
