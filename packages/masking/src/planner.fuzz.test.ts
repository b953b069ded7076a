/**
 * Random values (random bytes, invalid UTF-8, and mixes of sensitive and look-alike tokens) through
 * random plans: masking never throws, values without a match come back as the very same Buffer,
 * and a full-style mask leaves nothing a detector would find. Plus hostile shapes that would make
 * a careless regular expression backtrack for seconds.
 */
import type { MaskRule } from "@moat/policy";
import { describe, expect, it } from "vitest";
import type { ColumnInfo } from "./columns.js";
import { DETECTOR_NAMES, detectorMask, findMatches, mayContain, type Detector } from "./detectors.js";
import { compileMasks } from "./planner.js";

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function pick<T>(r: () => number, list: readonly T[]): T {
  return list[Math.floor(r() * list.length)] as T;
}

const TOKENS = [
  "alice@example.com",
  "a.b+c@x.co.uk",
  "@",
  "x@y",
  "4111 1111 1111 1111",
  "4111111111111111",
  "4111111111111112",
  "378282246310005",
  "+44 20 7946 0958",
  "(212) 555-1234",
  "01 23 45 67 89",
  "DE89 3704 0044 0532 0130 00",
  "GB82WEST12345698765432",
  "123-45-6789",
  "666-12-3456",
  "AB123456C",
  "1 85 05 78 006 084 91",
  "AKIAIOSFODNN7EXAMPLE",
  "ghp_" + "a1".repeat(18),
  "sk-" + "Ab3".repeat(12),
  "moat_ak_x_y12345",
  "-----BEGIN PRIVATE KEY-----",
  "-----END PRIVATE KEY-----",
  "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.sig",
  "eyJ",
  "2024-01-15",
  "550e8400-e29b-41d4-a716-446655440000",
  "名前",
  "😀",
  "é",
  " ",
  "-",
  ".",
  "+",
  "_",
  "\\",
  '"',
  "\\n",
  "\n",
  "0",
  "12",
  "345",
  "6789",
  "word",
  "X",
];

function randomValue(r: () => number): Buffer {
  if (r() < 0.3) {
    const bytes = Buffer.alloc(Math.floor(r() * 64));
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(r() * 256);
    return bytes;
  }
  const parts: Buffer[] = [];
  const n = Math.floor(r() * 8);
  for (let i = 0; i < n; i++) {
    parts.push(r() < 0.1 ? Buffer.from([Math.floor(r() * 256)]) : Buffer.from(pick(r, TOKENS)));
  }
  return Buffer.concat(parts);
}

const TYPES = [25, 1043, 19, 705, 114, 3802, 20, 23, 1700, 2950, 16_500, 1009];
const STYLES = ["full", "partial", "hash", "null"] as const;

function randomRules(r: () => number): MaskRule[] {
  const rules: MaskRule[] = [];
  const n = 1 + Math.floor(r() * 3);
  for (let i = 0; i < n; i++) {
    const rule: MaskRule = { style: pick(r, STYLES) };
    if (r() < 0.4) rule.columns = [pick(r, ["c", "t.c", "s.t.c", "*", "x*", "other"])];
    if (!rule.columns || r() < 0.3) {
      rule.detectors = [...new Set(Array.from({ length: 1 + Math.floor(r() * 3) }, () => pick(r, DETECTOR_NAMES)))];
    }
    rules.push(rule);
  }
  return rules;
}

describe("fuzz", () => {
  it("never throws; unmatched values come back as the same Buffer", () => {
    const r = rng(20_261_125);
    for (let round = 0; round < 400; round++) {
      const rules = randomRules(r);
      const masks = compileMasks(rules, { hashKey: Buffer.alloc(16, 1) })!;
      const column: ColumnInfo = {
        name: "c",
        typeOid: pick(r, TYPES),
        format: r() < 0.5 ? 0 : 1,
        ...(r() < 0.5 ? { table: { schema: "s", name: "t" } } : {}),
      };
      const plan = masks.plan([column]);
      for (let v = 0; v < 25; v++) {
        const value = randomValue(r);
        if (!plan) continue;
        const out = plan.maskValue(0, value);
        expect(out === null || Buffer.isBuffer(out)).toBe(true);
        const columnPlan = plan.columns[0];
        if (!columnPlan || columnPlan.style !== undefined) continue;
        const enabled = (columnPlan.detectors ?? []).map((d) => d.detector);
        const offset = column.typeOid === 3802 && column.format === 1 ? 1 : 0;
        if (offset === 1 && value[0] !== 1) {
          expect(out).toBeNull();
          continue;
        }
        const matches = findMatches(value.toString("latin1", offset), enabled);
        if (matches.length === 0) expect(out).toBe(value);
        else expect(out).not.toBe(value);
      }
    }
  });

  it("full masking leaves nothing a detector finds", () => {
    const r = rng(7);
    const masks = compileMasks([{ detectors: [...DETECTOR_NAMES], style: "full" }])!;
    const plan = masks.plan([{ name: "c", typeOid: 25, format: 0 }])!;
    for (let i = 0; i < 5000; i++) {
      const value = randomValue(r);
      const out = plan.maskValue(0, value)!;
      const left = findMatches(out.toString("latin1"), DETECTOR_NAMES);
      expect(left.map((m) => out.toString("latin1").slice(m.start, m.end))).toEqual([]);
    }
  });

  it("with the email detector alone, one pass leaves no email behind, in every style", () => {
    // The masker skips its rescan in that case: check that a rescan would find nothing.
    const r = rng(2026);
    const parts = ["a", "b", "@", "@", ".", "..", "-", "x.io", "b.com", "co.uk", "é", "+", "_", "1", " ", "*", ":"];
    for (const style of STYLES.filter((s) => s !== "null")) {
      const plan = compileMasks([{ detectors: ["email"], style }], { hashKey: Buffer.alloc(16, 2) })!.plan([
        { name: "c", typeOid: 25, format: 0 },
      ])!;
      for (let i = 0; i < 20_000; i++) {
        const value =
          r() < 0.5
            ? randomValue(r)
            : Buffer.from(Array.from({ length: 1 + Math.floor(r() * 12) }, () => pick(r, parts)).join(""));
        const out = plan.maskValue(0, value)!;
        const left = findMatches(out.toString("latin1"), ["email"]);
        expect({ value: value.toString("latin1"), left }).toEqual({ value: value.toString("latin1"), left: [] });
      }
    }
  });

  it("scans hostile values in bounded time", () => {
    const plan = compileMasks([{ detectors: [...DETECTOR_NAMES], style: "full" }])!.plan([
      { name: "c", typeOid: 25, format: 0 },
    ])!;
    const size = 200_000;
    const hostile = [
      "a".repeat(size) + "@",
      "a@".repeat(size / 2),
      "a.".repeat(size / 2) + "@b",
      "x@" + "a.".repeat(size / 2),
      "1".repeat(size),
      "1 ".repeat(size / 2),
      "4444 ".repeat(size / 5),
      "+1 ".repeat(size / 3) + "x",
      "0 ".repeat(size / 2),
      "01-".repeat(size / 3),
      "AB12".repeat(size / 4),
      "DE89 ".repeat(size / 5),
      "xoxb-" + "a".repeat(size) + "_",
      "sk-" + "a1".repeat(size / 2) + "_",
      "ghp_" + "a".repeat(size),
      "eyJ" + "a".repeat(size),
      "eyJa.".repeat(size / 5),
      "-----BEGIN PRIVATE KEY-----".repeat(size / 27),
      "-----BEGIN ".repeat(size / 11),
      "123-45-".repeat(size / 7),
    ];
    const started = performance.now();
    for (const text of hostile) plan.maskValue(0, Buffer.from(text));
    // Generous: the whole set takes tens of milliseconds; quadratic behaviour would take minutes.
    expect(performance.now() - started).toBeLessThan(5000);
  });
});

describe("detectors", () => {
  it("are independent of each other and of the pre-check", () => {
    const r = rng(99);
    for (let i = 0; i < 2000; i++) {
      const text = randomValue(r).toString("latin1");
      const all = findMatches(text, DETECTOR_NAMES);
      // The byte pre-check never rules out a detector that finds something.
      const possible = mayContain(Buffer.from(text, "latin1"), 0, detectorMask(DETECTOR_NAMES));
      for (const m of all) expect(possible & detectorMask([m.detector])).not.toBe(0);
      for (const d of DETECTOR_NAMES as Detector[]) {
        expect(findMatches(text, [d])).toEqual(all.filter((m) => m.detector === d));
      }
    }
  });
});
