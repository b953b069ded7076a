// Unit tests of the pure policy helpers: key order, the dry-run diff, and how local policy files
// are checked and their problems located (no files, no control plane).
import { describe, expect, it } from "vitest";
import { CliError } from "./errors.js";
import { diffDocuments, formatValue, orderPolicyDocument } from "./policy-documents.js";
import { checkPolicySources } from "./policy-files.js";

const policy = (name: string, rules: unknown[] = [{ name: "read", effect: "allow", actions: ["db:read"] }]) => ({
  apiVersion: "moat.dev/v1",
  kind: "Policy",
  metadata: { name },
  spec: { subjects: { groups: ["eng"] }, resources: { types: ["postgres"] }, rules },
});

describe("orderPolicyDocument", () => {
  it("puts keys in the format's order, unknown keys last and sorted", () => {
    const sorted = {
      apiVersion: "moat.dev/v1",
      kind: "Policy",
      metadata: { name: "p" },
      spec: {
        rules: [{ actions: ["connect"], effect: "allow", name: "r", zeta: 1, alpha: 2 }],
        resources: { labels: { b: "1", a: "2" } },
        subjects: { users: ["*"] },
      },
    };
    const ordered = orderPolicyDocument(sorted);
    expect(Object.keys(ordered.spec)).toEqual(["subjects", "resources", "rules"]);
    expect(Object.keys(ordered.spec.rules[0]!)).toEqual(["name", "effect", "actions", "alpha", "zeta"]);
    expect(Object.keys(ordered.spec.resources.labels)).toEqual(["a", "b"]);
    expect(ordered).toEqual(sorted);
  });
});

describe("diffDocuments", () => {
  it("lists changed, added and removed fields in document order", () => {
    const before = { ...policy("p"), spec: { ...policy("p").spec, masking: [{ columns: ["email"], style: "full" }] } };
    const after = policy("p", [
      { name: "read", effect: "deny", actions: ["db:read"], message: "not today" },
      { name: "write", effect: "deny", actions: ["db:write"] },
    ]);
    expect(diffDocuments(before, after)).toEqual([
      "spec.rules.0.effect: allow -> deny",
      '+ spec.rules.0.message: "not today"',
      "+ spec.rules.1",
      "- spec.masking",
    ]);
    expect(diffDocuments(after, after)).toEqual([]);
    expect(diffDocuments(policy("p", [{ a: 1 }, { b: 2 }]), policy("p", [{ a: 1 }]))).toEqual(["- spec.rules.1"]);
  });

  it("shows values so that types and long text stay recognisable", () => {
    expect(formatValue("db:read")).toBe("db:read");
    expect(formatValue("8h")).toBe("8h");
    expect(formatValue("two words")).toBe('"two words"');
    expect(formatValue("true")).toBe('"true"');
    expect(formatValue("10")).toBe('"10"');
    expect(formatValue(10)).toBe("10");
    expect(formatValue(["a", "b"])).toBe('["a","b"]');
    expect(formatValue("x".repeat(100))).toMatch(/^x{57}\.\.\.$/);
    expect(formatValue("a b".repeat(40))).toHaveLength(60);
    expect(formatValue("evil\u009b2J")).toBe('"evil?2J"');
  });
});

describe("checkPolicySources", () => {
  const yaml = (name: string, action = "db:read") =>
    `apiVersion: moat.dev/v1\nkind: Policy\nmetadata:\n  name: ${name}\nspec:\n  subjects: { groups: [eng] }\n  resources: { types: [postgres] }\n  rules:\n    - { name: r, effect: allow, actions: [${action}] }\n`;

  function problems(sources: { path: string; text: string }[]): string[] {
    try {
      checkPolicySources(sources);
    } catch (error) {
      if (!(error instanceof CliError)) throw error;
      return error.fields.map((f) => `${f.field}: ${f.message}`);
    }
    return [];
  }

  it("returns the documents of every file with the file each came from", () => {
    const set = checkPolicySources([
      { path: "a.yaml", text: `${yaml("a")}---\n---\n${yaml("b")}` },
      { path: "c.json", text: JSON.stringify([policy("c"), policy("d")]) },
    ]);
    expect(set.documents.map((d) => d.metadata.name)).toEqual(["a", "b", "c", "d"]);
    expect(set.sources).toEqual(["a.yaml", "a.yaml", "c.json", "c.json"]);
    expect(set.compiled.policyNames).toEqual(["a", "b", "c", "d"]);
  });

  it("locates semantic problems past empty documents and inside JSON lists", () => {
    // a.yaml: "a" on lines 1-9, two "---" (the second opens an empty document), "b" on lines 12-20.
    expect(problems([{ path: "a.yaml", text: `${yaml("a")}---\n---\n${yaml("b", "db:nope")}` }])).toEqual([
      expect.stringMatching(/^a\.yaml:20:43: b: spec\.rules\.0\.actions\.0: unknown action "db:nope"/),
    ]);

    const list = JSON.stringify(
      [policy("c"), policy("d", [{ name: "r", effect: "allow", actions: ["nope"] }])],
      null,
      2,
    );
    const [problem] = problems([{ path: "c.json", text: list }]);
    const line = list.split("\n").findIndex((l) => l.includes('"nope"')) + 1;
    expect(problem).toMatch(new RegExp(`^c\\.json:${line}:\\d+: d: spec\\.rules\\.0\\.actions\\.0: unknown action`));
  });

  it("reports a name used in two files at the second one", () => {
    expect(
      problems([
        { path: "a.yaml", text: yaml("a") },
        { path: "b.yaml", text: yaml("a") },
      ]),
    ).toEqual(["b.yaml:4:9: a: metadata.name: another policy has this name"]);
  });

  it("no documents at all is a usage error, not an empty set", () => {
    expect(() => checkPolicySources([{ path: "empty.yaml", text: "# nothing\n" }])).toThrow(
      /no policy documents in empty\.yaml/,
    );
  });
});
