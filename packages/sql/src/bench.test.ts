// Prints classification costs (cache hit, miss, parse alone); asserts nothing about timings.
// Run: pnpm exec vitest run --project packages packages/sql/src/bench.test.ts
import { fingerprintSync, parseSync } from "libpg-query";
import { beforeAll, expect, it } from "vitest";
import { createClassifier, loadSqlParser } from "./index.js";
import { normalizeForCache } from "./normalize.js";

beforeAll(async () => {
  await loadSqlParser();
});

const LEXICAL = { standardConformingStrings: true };

function perCall(iterations: number, fn: (i: number) => void): number {
  const start = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) fn(i);
  return Number(process.hrtime.bigint() - start) / iterations / 1000;
}

it("measures cache hits and misses", () => {
  const classifier = createClassifier();
  const pgbench = (aid: number) => `SELECT abalance FROM pgbench_accounts WHERE aid = ${aid};`;
  const update = (aid: number, delta: number) =>
    `UPDATE pgbench_accounts SET abalance = abalance + ${delta} WHERE aid = ${aid};`;
  perCall(20_000, (i) => classifier.classify(pgbench(i), LEXICAL)); // warm up
  const hit = perCall(100_000, (i) => classifier.classify(pgbench(i * 7919), LEXICAL));
  const hitUpdate = perCall(100_000, (i) => classifier.classify(update(i, i - 5000), LEXICAL));
  const uncached = createClassifier({ cacheEntries: 0 });
  perCall(2_000, (i) => uncached.classify(pgbench(i), LEXICAL)); // warm up
  const miss = perCall(2_000, (i) => uncached.classify(pgbench(i), LEXICAL));
  const texts = (i: number) => pgbench(i * 7919);
  const baseline = perCall(100_000, (i) => texts(i).length);
  const normalize = perCall(100_000, (i) => normalizeForCache(texts(i)));
  const parse = perCall(2_000, (i) => parseSync(pgbench(i)));
  const fingerprint = perCall(2_000, (i) => fingerprintSync(pgbench(i)));
  const line = (name: string, us: number) => `  ${name.padEnd(40)} ${us.toFixed(2).padStart(8)} µs`;
  console.log(
    [
      "@moat/sql classification cost per call:",
      line("building the test text (baseline)", baseline),
      line("cache hit (pgbench SELECT)", hit),
      line("  of which normalizeForCache", normalize),
      line("cache hit (pgbench UPDATE)", hitUpdate),
      line("miss (parse + classify + fingerprint)", miss),
      line("  of which libpg-query parseSync", parse),
      line("  of which libpg-query fingerprintSync", fingerprint),
    ].join("\n"),
  );
  expect(classifier.classify(pgbench(1), LEXICAL).ok).toBe(true);
}, 60_000);
