#!/usr/bin/env node
// Policy decision cost: p50/p99 of one `evaluate` with a 1 000-rule policy set, median of 5 runs.
// Target (issue "Identity and policy"): <= 2 us p50. Run: pnpm build && node bench/policy-eval.mjs
import { performance } from "node:perf_hooks";
import { compilePolicies, evaluate } from "@moat/policy";

const RESOURCES = 100;
const POLICIES = 200;
const RULES_PER_POLICY = 5;
const DECISIONS = 200_000;
const RUNS = 5;

function buildPolicies() {
  const docs = [];
  for (let p = 0; p < POLICIES; p++) {
    const rules = [];
    for (let r = 0; r < RULES_PER_POLICY; r++) {
      rules.push({
        name: `r${r}`,
        effect: ["allow", "allow", "review", "deny", "allow"][r],
        actions: [["db:read", "connect"], ["db:write"], ["db:write"], ["db:ddl", "db:admin"], ["db:copy-*"]][r],
        ...(r === 2 ? { tables: [`schema${p % 10}.*`] } : {}),
        ...(r === 4
          ? {
              conditions: {
                sourceCidrs: ["10.0.0.0/8"],
                timeWindows: [{ from: "08:00", to: "20:00", timezone: "Europe/Paris" }],
              },
            }
          : {}),
      });
    }
    docs.push({
      apiVersion: "moat.dev/v1",
      kind: "Policy",
      metadata: { name: `policy-${p}` },
      spec: {
        subjects: { groups: [`team-${p % 20}`, "everyone-" + (p % 3)] },
        resources:
          p % 10 === 0
            ? { types: ["postgres"], labels: { env: "prod" } }
            : { names: [`db-${p % RESOURCES}`, `db-${(p * 7) % RESOURCES}`] },
        rules,
      },
    });
  }
  return docs;
}

const compiled = compilePolicies(buildPolicies());
const now = Date.parse("2026-11-25T12:00:00Z");
const requests = [];
const actions = ["connect", "db:read", "db:write", "db:ddl", "db:copy-out"];
for (let i = 0; i < 1024; i++) {
  requests.push({
    user: `user${i}@example.com`,
    groups: [`team-${i % 20}`, `everyone-${i % 3}`],
    resource: { name: `db-${i % RESOURCES}`, type: "postgres", labels: { env: i % 2 ? "prod" : "dev" } },
    action: actions[i % actions.length],
    tables: i % 3 ? [`schema${i % 10}.t${i % 7}`] : [],
    sourceIp: `10.0.${i % 256}.1`,
    now: now + i * 1000,
  });
}

function run() {
  const batch = 64; // time batches: a single decision is below the timer's resolution
  const samples = new Float64Array(DECISIONS / batch);
  let sink = 0;
  for (let s = 0; s < samples.length; s++) {
    const t0 = performance.now();
    for (let i = 0; i < batch; i++) sink += evaluate(compiled, requests[(s * batch + i) & 1023]).effect.length;
    samples[s] = ((performance.now() - t0) * 1000) / batch;
  }
  samples.sort();
  return { p50: samples[Math.floor(samples.length * 0.5)], p99: samples[Math.floor(samples.length * 0.99)], sink };
}

run(); // warm-up
const results = Array.from({ length: RUNS }, run);
const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const p50 = median(results.map((r) => r.p50));
const p99 = median(results.map((r) => r.p99));
console.log(`policy set: ${compiled.policyNames.length} policies, ${compiled.ruleCount} rules, ${RESOURCES} resources`);
console.log(
  `evaluate(): p50 ${p50.toFixed(2)} us, p99 ${p99.toFixed(2)} us per decision (median of ${RUNS} runs, batches of 64)`,
);
console.log(
  `target p50 <= 2 us: ${p50 <= 2 ? "met" : "NOT met"}; vs a wasm policy engine at 70-480 us: ${(70 / p50).toFixed(0)}-${(480 / p50).toFixed(0)}x faster`,
);
