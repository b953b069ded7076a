/**
 * The indexed engine against a naive reference evaluator (every policy, every rule, no index) on
 * random policy sets and requests: the index must never change a verdict.
 */
import { describe, expect, it } from "vitest";
import {
  compilePolicies,
  evaluate,
  schemaProblems,
  type Effect,
  type PolicyDocument,
  type PolicyRequest,
  type ResourceType,
} from "./index.js";

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const USERS = ["ann", "bob", "cat", "etl"];
const GROUPS = ["eng", "dba", "ops"];
const NAMES = ["db-a", "db-b", "web-1", "warehouse"];
const TYPES: ResourceType[] = ["postgres", "ssh"];
const ACTION_PATTERNS = ["connect", "db:read", "db:write", "db:*", "ssh:*", "*", "db:copy-*", "ssh:exec"];
const ACTIONS = ["connect", "db:read", "db:write", "db:ddl", "db:copy-out", "ssh:shell", "ssh:exec", "k8s:get"];
const TABLES = ["public.a", "public.b", "analytics.e", "vault.k"];
const TABLE_PATTERNS = ["public.*", "analytics.*", "vault.k", "a", "*"];
const EFFECTS: Effect[] = ["allow", "deny", "review"];

function pick<T>(r: () => number, list: readonly T[]): T {
  return list[Math.floor(r() * list.length)] as T;
}
function some<T>(r: () => number, list: readonly T[], max = 2): T[] {
  const n = 1 + Math.floor(r() * max);
  return [...new Set(Array.from({ length: n }, () => pick(r, list)))];
}

function randomPolicies(r: () => number, count: number): PolicyDocument[] {
  return Array.from({ length: count }, (_, i) => {
    const subjects: PolicyDocument["spec"]["subjects"] = {};
    if (r() < 0.5) subjects.users = r() < 0.1 ? ["*"] : some(r, USERS);
    if (r() < 0.5 || !subjects.users) subjects.groups = some(r, GROUPS);
    if (r() < 0.2) subjects.serviceAccounts = ["etl"];
    const resources: PolicyDocument["spec"]["resources"] = {};
    const kind = r();
    if (kind < 0.5) resources.names = r() < 0.2 ? ["db-*"] : some(r, NAMES);
    else if (kind < 0.8) resources.types = [pick(r, TYPES)];
    else resources.labels = { env: pick(r, ["prod", "dev", "*"]) };
    const rules = Array.from({ length: 1 + Math.floor(r() * 3) }, (_, j) => ({
      name: `r${j}`,
      effect: pick(r, EFFECTS),
      actions: some(r, ACTION_PATTERNS),
      ...(r() < 0.4 ? { tables: some(r, TABLE_PATTERNS) } : {}),
    }));
    return {
      apiVersion: "moat.dev/v1",
      kind: "Policy",
      metadata: { name: `p${i}` },
      spec: { subjects, resources, rules },
    } as PolicyDocument;
  });
}

function glob(pattern: string, value: string): boolean {
  return new RegExp(
    `^${pattern
      .split("*")
      .map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&"))
      .join(".*")}$`,
  ).test(value);
}

/** The semantics of docs/policy.md, written the obvious way. */
function reference(docs: PolicyDocument[], q: PolicyRequest): Effect {
  const rank = { allow: 1, review: 2, deny: 3 } as const;
  const decideTable = (table: string | undefined): Effect => {
    let best: Effect | undefined;
    for (const d of docs) {
      const s = d.spec.subjects;
      const subjectOk = q.serviceAccount
        ? (s.serviceAccounts ?? []).some((p) => glob(p, q.user))
        : (s.users ?? []).some((p) => glob(p, q.user)) ||
          (s.groups ?? []).some((p) => q.groups.some((g) => glob(p, g)));
      const res = d.spec.resources;
      const resourceOk =
        (!res.names || res.names.some((p) => glob(p, q.resource.name))) &&
        (!res.types || res.types.includes(q.resource.type)) &&
        Object.entries(res.labels ?? {}).every(
          ([k, v]) => q.resource.labels[k] !== undefined && glob(v, q.resource.labels[k] as string),
        );
      if (!subjectOk || !resourceOk) continue;
      for (const rule of d.spec.rules) {
        if (!rule.actions.some((a) => glob(a, q.action))) continue;
        if (rule.tables) {
          const patterns = rule.tables.map((p) => (p.includes(".") ? p : `*.${p}`));
          if (table === undefined) {
            if (rule.effect !== "allow") continue;
          } else if (!patterns.some((p) => glob(p, table))) continue;
        }
        if (!best || rank[rule.effect] > rank[best]) best = rule.effect;
      }
    }
    return best ?? "deny";
  };
  const tables = q.tables ?? [];
  if (tables.length === 0) return decideTable(undefined);
  let worst: Effect = "allow";
  for (const t of tables) {
    const e = decideTable(t);
    if (rank[e] > rank[worst]) worst = e;
  }
  return worst;
}

describe("engine vs reference", () => {
  it("agrees on 20 000 random requests over 200 random policy sets", { timeout: 60_000 }, () => {
    const r = rng(42);
    let decided = 0;
    for (let set = 0; set < 200; set++) {
      const docs = randomPolicies(r, 1 + Math.floor(r() * 8));
      for (const d of docs) expect(schemaProblems(d)).toEqual([]);
      const compiled = compilePolicies(docs);
      for (let i = 0; i < 100; i++) {
        const q: PolicyRequest = {
          user: pick(r, USERS),
          groups: r() < 0.3 ? [] : some(r, GROUPS),
          serviceAccount: r() < 0.15,
          resource: {
            name: pick(r, NAMES),
            type: pick(r, TYPES),
            labels: r() < 0.7 ? { env: pick(r, ["prod", "dev"]) } : {},
          },
          action: pick(r, ACTIONS),
          ...(r() < 0.6 ? { tables: some(r, TABLES, 3) } : {}),
          now: 0,
        };
        const got = evaluate(compiled, q).effect;
        const want = reference(docs, q);
        if (got !== want)
          throw new Error(`mismatch: engine ${got}, reference ${want}\n${JSON.stringify({ docs, q }, null, 1)}`);
        decided++;
      }
    }
    expect(decided).toBe(20_000);
  });
});

describe("parser robustness", () => {
  it(
    "mutated documents produce a PolicyError or a valid policy set, never another exception",
    { timeout: 60_000 },
    async () => {
      const { readFileSync, readdirSync } = await import("node:fs");
      const { join } = await import("node:path");
      const { parsePolicyText, PolicyError } = await import("./index.js");
      const dir = join(import.meta.dirname, "..", "..", "..", "examples", "policies");
      const texts = readdirSync(dir).map((f) => readFileSync(join(dir, f), "utf8"));
      const r = rng(7);
      const alphabet = ":-[]{}'\"\n #*&!|>%@`\\\t0aZ";
      let errors = 0;
      for (let i = 0; i < 3000; i++) {
        let text = pick(r, texts);
        for (let m = 0; m < 1 + Math.floor(r() * 4); m++) {
          const at = Math.floor(r() * text.length);
          const op = r();
          if (op < 0.4) text = text.slice(0, at) + text.slice(at + 1 + Math.floor(r() * 5));
          else if (op < 0.8) text = text.slice(0, at) + pick(r, [...alphabet]) + text.slice(at);
          else text = text.slice(0, at);
        }
        try {
          compilePolicies(parsePolicyText(text));
        } catch (error) {
          if (!(error instanceof PolicyError))
            throw new Error(`unexpected ${(error as Error).name}: ${(error as Error).message}\n---\n${text}`);
          expect(error.problems.length).toBeGreaterThan(0);
          errors++;
        }
      }
      expect(errors).toBeGreaterThan(100);
    },
  );
});
