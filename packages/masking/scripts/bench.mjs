// Throughput of result masking as the proxy uses it: one plan per result, then maskValue for the
// planned columns of every row (unplanned columns are relayed untouched, so they cost a lookup).
// Prints rows/s per scenario; asserts nothing. Run `pnpm run bench` (builds dist first).
import { performance } from "node:perf_hooks";
import { compileMasks } from "../dist/index.js";

const USERS = { schema: "public", name: "users" };
const columns = [
  { name: "id", table: USERS, typeOid: 20, format: 0 },
  { name: "name", table: USERS, typeOid: 25, format: 0 },
  { name: "email", table: USERS, typeOid: 1043, format: 0 },
  { name: "card_number", table: USERS, typeOid: 25, format: 0 },
  { name: "note", table: USERS, typeOid: 25, format: 0 },
  { name: "created_at", table: USERS, typeOid: 1184, format: 0 },
];

function rows(count, note) {
  return Array.from({ length: count }, (_, i) =>
    [
      String(1_000_000 + i),
      `Customer Number ${i}`,
      `customer${i}@example.com`,
      "4111 1111 1111 1111",
      note(i),
      "2026-11-25 12:00:00.123456+00",
    ].map((v) => Buffer.from(v)),
  );
}

function run(label, rules, data, seconds = 1.5) {
  const plan = compileMasks(rules).plan(columns);
  const planned = plan.columns.map((c) => c !== undefined);
  let done = 0;
  let bytes = 0;
  const deadline = performance.now() + seconds * 1000;
  const started = performance.now();
  while (performance.now() < deadline) {
    for (const row of data) {
      for (let i = 0; i < row.length; i++) {
        const out = planned[i] ? plan.maskValue(i, row[i]) : row[i];
        bytes += out === null ? 0 : out.length;
      }
    }
    done += data.length;
  }
  const elapsed = (performance.now() - started) / 1000;
  const rate = Math.round(done / elapsed).toLocaleString("en-US");
  console.log(`${label.padEnd(64)} ${rate.padStart(12)} rows/s  (planned columns: ${plan.maskedColumns.join(", ")})`);
  return bytes;
}

const ALL = ["email", "credit-card", "phone", "iban", "national-id", "api-key", "jwt"];
const twoColumns = [
  { columns: ["users.email"], style: "partial" },
  { columns: ["*.card_number"], style: "full" },
];
const clean = rows(10_000, (i) => `Order ${i} shipped on time, thanks for the quick reply`);
const dirty = rows(10_000, (i) => `Order ${i}: call +44 20 7946 0958 or write to buyer${i}@example.org`);

console.log(`node ${process.version}, 6 columns per row`);
run("2 masked columns (partial email, full card), no detectors", twoColumns, clean);
run("2 masked columns (hash email, full card)", [{ columns: ["email"], style: "hash" }, twoColumns[1]], clean);
run("2 masked columns + all detectors, clean text", [...twoColumns, { detectors: ALL, style: "full" }], clean);
run(
  "2 masked columns + all detectors, a phone and an email per note",
  [...twoColumns, { detectors: ALL, style: "full" }],
  dirty,
);
run("all detectors, no column rules (the email and card values match)", [{ detectors: ALL, style: "full" }], clean);
