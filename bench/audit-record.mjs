// The agent's cost of recording one statement (QueryRecorder.recordSoon: encode, frame, chain,
// stage, write each turn), without the session around it; --per-turn events per event-loop turn.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
const root = new URL("..", import.meta.url);
const { AuditSpool } = await import(new URL("apps/agent/dist/audit/spool.js", root));
const { createAuditRecorder } = await import(new URL("apps/agent/dist/audit/recorder.js", root));
const { values: args } = parseArgs({
  options: { events: { type: "string", default: "200000" }, "per-turn": { type: "string", default: "1" } },
});
const EVENTS = Number(args.events);
const PER_TURN = Number(args["per-turn"]);
const dataDir = mkdtempSync(join(tmpdir(), "moat-audit-bench-"));
const { spool } = AuditSpool.open({ dir: join(dataDir, "audit"), maxBytes: 1 << 30 });
const audit = createAuditRecorder({ spool, bundleVersion: () => 1n });
const q = audit.queries({
  actor: {
    user: "alice@example.com",
    groups: ["dba"],
    sourceAddress: "127.0.0.1",
    tokenId: "tok_01J0000000000000000000",
  },
  resource: "db",
  sessionId: "01J00000000000000000000000",
});
const turn = () => new Promise((resolve) => setImmediate(resolve));
const times = [];
for (let done = 0; done < EVENTS; done += PER_TURN) {
  const started = process.hrtime.bigint();
  for (let i = 0; i < PER_TURN; i++) {
    q.recordSoon({
      verdict: 1,
      rule: "read-only",
      message: "",
      query: {
        text: `SELECT abalance FROM pgbench_accounts WHERE aid = ${done + i};`,
        fingerprint: "",
        statementClass: "read",
        tables: ["public.pgbench_accounts"],
        durationUs: 120,
        rows: 1,
        maskedColumns: [],
      },
    });
  }
  await turn();
  if (done >= EVENTS / 5) times.push(Number(process.hrtime.bigint() - started) / PER_TURN / 1000);
}
times.sort((a, b) => a - b);
const mean = times.reduce((a, b) => a + b, 0) / times.length;
console.log(
  `audit-record: ${EVENTS} events, ${PER_TURN} per turn; µs per event: mean ${mean.toFixed(2)}, p50 ${times[Math.floor(times.length / 2)].toFixed(2)}`,
);
spool.close();
rmSync(dataDir, { recursive: true, force: true });
