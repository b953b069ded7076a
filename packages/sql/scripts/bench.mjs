#!/usr/bin/env node
// Prints what classification costs: a cache hit for pgbench-style statements, a miss, and the
// parser alone. Needs the build: pnpm --filter @moat/sql build && node packages/sql/scripts/bench.mjs
import { fingerprintSync, parseSync } from "libpg-query";
import { createClassifier, loadSqlParser } from "../dist/index.js";

await loadSqlParser();
const lexical = { standardConformingStrings: true };
const select = (aid) => `SELECT abalance FROM pgbench_accounts WHERE aid = ${aid};`;
const update = (aid) => `UPDATE pgbench_accounts SET abalance = abalance + ${aid % 5000} WHERE aid = ${aid};`;
const param = () => "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

function perCall(name, iterations, fn) {
  for (let i = 0; i < iterations / 5; i++) fn(i);
  const start = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) fn(i);
  const us = Number(process.hrtime.bigint() - start) / iterations / 1000;
  console.log(`  ${name.padEnd(44)} ${us.toFixed(2).padStart(8)} µs`);
}

const cached = createClassifier();
const uncached = createClassifier({ cacheEntries: 0 });
console.log("@moat/sql, per call:");
perCall("building the text alone (baseline)", 1_000_000, (i) => select(i * 7919).length);
perCall("cache hit: pgbench SELECT, new aid each time", 1_000_000, (i) => cached.classify(select(i * 7919), lexical));
perCall("cache hit: pgbench UPDATE, new values", 1_000_000, (i) => cached.classify(update(i), lexical));
perCall("cache hit: extended-protocol text with $1", 1_000_000, () => cached.classify(param(), lexical));
perCall("miss: parse + classify + fingerprint", 5_000, (i) => uncached.classify(select(i), lexical));
perCall("  libpg-query parseSync alone", 5_000, (i) => parseSync(select(i)));
perCall("  libpg-query fingerprintSync alone", 5_000, (i) => fingerprintSync(select(i)));
