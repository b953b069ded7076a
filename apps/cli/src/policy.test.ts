// `moat policy ...` in-process against a real control plane (REST on a free port, SQLite in a temp
// dir), with the example policies of the repository: apply (diff, idempotence, dry run, prune),
// local checks and tests, simulate, get/list/delete, and the exit status of each failure.
// The tests of a describe block share the control plane's policies and run in order.
import { copyFileSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningControlPlane } from "@moat/control-plane/server";
import { tempDir } from "@moat/testkit";
import { parsePolicyText } from "@moat/policy";
import { run } from "./cli.js";
import type { Input } from "./io.js";
import { addApiUser, bootstrapKey, startTestControlPlane } from "./test-support/fixtures.js";

const examples = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "examples", "policies");
const exampleNames = [
  "dba-ddl-in-window",
  "dba-writes-need-approval",
  "ddl-change-window",
  "etl-copy-out",
  "oncall-night-shell",
  "prod-readonly",
];

let cp: RunningControlPlane;
let admin: Record<string, string>;
let member: Record<string, string>;
let memberEmail: string;

beforeAll(async () => {
  cp = await startTestControlPlane();
  admin = { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: bootstrapKey(cp) };
  const m = await addApiUser(cp, "member");
  member = { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: m.key };
  memberEmail = m.email;
}, 30_000);

afterAll(async () => {
  await cp?.close();
});

interface Result {
  code: number;
  stdout: string;
  stderr: string;
  /** Requests the CLI made. */
  requests: string[];
}

async function moat(argv: string[], env: Record<string, string> = {}): Promise<Result> {
  let stdout = "";
  let stderr = "";
  const requests: string[] = [];
  const code = await run(argv, {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
    stdin: Readable.from([]) as Input,
    env: { HOME: tempDir("moat-home-"), ...env },
    fetch: (input, init) => {
      requests.push(`${init?.method ?? "GET"} ${new URL(String(input)).pathname}`);
      return fetch(input, init);
    },
  });
  return { code, stdout, stderr, requests };
}

/** A temp dir holding copies of the example policies. */
function copyOfExamples(): string {
  const dir = tempDir("moat-policies-");
  for (const name of readdirSync(examples)) copyFileSync(join(examples, name), join(dir, name));
  return dir;
}

/** Writes `text` to `name` in a new temp dir and returns the file's path. */
function policyFile(name: string, text: string): string {
  const path = join(tempDir("moat-policy-"), name);
  writeFileSync(path, text);
  return path;
}

const badEffect = `apiVersion: moat.dev/v1
kind: Policy
metadata:
  name: bad
spec:
  subjects:
    users: ["*"]
  resources:
    types: [postgres]
  rules:
    - name: read
      effect: permit
      actions: [db:read]
`;

const json = <T = Record<string, unknown>>(text: string) => JSON.parse(text) as T;

describe("policy test (local, no control plane)", () => {
  it("runs the examples' own tests: all pass", async () => {
    const result = await moat(["policy", "test", "-f", examples]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.requests).toEqual([]);
    expect(result.stdout).toContain("PASS prod-readonly / engineers read\n");
    expect(result.stdout).toContain("PASS dba-ddl-in-window / DDL on a Tuesday\n");
    expect(result.stdout).toMatch(/\n15 passed, 0 failed\n$/);

    const asJson = await moat(["--json", "policy", "test", "-f", examples]);
    expect(asJson.code).toBe(0);
    const results = json<{ passed: boolean; policy: string; verdict: { effect: string } }[]>(asJson.stdout);
    expect(results).toHaveLength(15);
    expect(results.every((r) => r.passed)).toBe(true);
  });

  it("a wrong expectation fails with the verdict (exit 1)", async () => {
    const dir = copyOfExamples();
    const file = join(dir, "prod-readonly.yaml");
    writeFileSync(
      file,
      readFileSync(file, "utf8").replace(
        /(- name: engineers do not write[\s\S]*?)expect: deny/,
        "$1expect: allow\n      expectRule: prod-readonly/read",
      ),
    );
    const result = await moat(["policy", "test", "-f", dir]);
    expect(result.code).toBe(1);
    expect(result.stdout).toContain(
      "FAIL prod-readonly / engineers do not write: expected allow by rule prod-readonly/read, got deny (default deny): " +
        "no policy allows db:write on orders-db (table public.orders) for alice@example.com\n",
    );
    expect(result.stdout).toContain("PASS prod-readonly / engineers read\n");
    expect(result.stdout).toMatch(/\n14 passed, 1 failed\n$/);
    expect(result.stderr).toBe("moat: 1 of 15 policy tests failed (tests_failed)\n");

    const asJson = await moat(["policy", "test", "-f", file, "--json"]);
    expect(asJson.code).toBe(1);
    expect(json<{ passed: boolean }[]>(asJson.stdout).filter((r) => !r.passed)).toHaveLength(1);
    expect(json(asJson.stderr)).toMatchObject({ code: "tests_failed" });
  });

  it("invalid files exit 2 with FILE:LINE:COL for every problem", async () => {
    const bad = policyFile("bad.yaml", badEffect);
    const broken = policyFile("broken.yaml", "apiVersion: moat.dev/v1\nkind: [Policy\n");
    const result = await moat(["policy", "test", "-f", bad, "-f", broken]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^moat: the policy files have \d+ problems \(policy_invalid\)$/m);
    expect(result.stderr).toContain(`  ${bad}:12:15: spec.rules.0.effect: `);
    expect(result.stderr).toMatch(new RegExp(`^  ${broken}:\\d+:\\d+: \\(syntax\\): `, "m"));
    expect(result.stdout).toBe("");
  });

  it("missing files and empty directories are usage errors", async () => {
    const missing = await moat(["policy", "test", "-f", "/nonexistent/policies"]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("cannot read /nonexistent/policies: no such file or directory (usage)");
    const empty = await moat(["policy", "test", "-f", tempDir()]);
    expect(empty.code).toBe(2);
    expect(empty.stderr).toContain("no .yaml, .yml, .json files in");
    expect((await moat(["policy", "test"])).code).toBe(2);
  });
});

describe("policy apply, get, list, delete", () => {
  it("parse errors exit 2 before any request", async () => {
    const result = await moat(["policy", "apply", "-f", policyFile("bad.yaml", badEffect)], admin);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/bad\.yaml:12:15: spec\.rules\.0\.effect: /);
    expect(result.requests).toEqual([]);
  });

  it("semantic errors (unknown action, a name used twice) exit 2 before any request", async () => {
    const unknownAction = policyFile(
      "actions.yaml",
      badEffect.replace("permit", "allow").replace("[db:read]", "[db:read, db:nope]"),
    );
    const result = await moat(["policy", "apply", "-f", unknownAction], admin);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain(`  ${unknownAction}:13:26: bad: spec.rules.0.actions.1: unknown action "db:nope"`);
    expect(result.requests).toEqual([]);

    const twice = policyFile(
      "twice.yaml",
      `${badEffect.replace("permit", "allow")}---\n${badEffect.replace("permit", "deny")}`,
    );
    const dup = await moat(["--json", "policy", "apply", "-f", twice], admin);
    expect(dup.code).toBe(2);
    expect(json(dup.stderr)).toMatchObject({
      code: "policy_invalid",
      errors: [{ field: `${twice}:18:9: bad: metadata.name`, message: "another policy has this name" }],
    });
    expect(dup.requests).toEqual([]);
  });

  it("a member may not apply (exit 4)", async () => {
    const result = await moat(["policy", "apply", "-f", examples], member);
    expect(result.code).toBe(4);
    expect(result.stderr).toContain("(permission_denied)");
  });

  let revision: string;

  it("applies the examples: every policy created", async () => {
    const result = await moat(["policy", "apply", "-f", examples], admin);
    expect(result.code, result.stderr).toBe(0);
    expect(result.requests).toEqual(["POST /api/v1/policies/apply"]);
    for (const name of exampleNames) expect(result.stdout).toContain(`+ created ${name}\n`);
    const last = /^revision (\d+) \(6 created, 0 updated, 0 deleted, 0 unchanged\)$/m.exec(result.stdout);
    expect(last).not.toBeNull();
    revision = last![1]!;
  });

  it("applying again changes nothing and keeps the revision", async () => {
    const result = await moat(["policy", "apply", "-f", examples], admin);
    expect(result.code, result.stderr).toBe(0);
    for (const name of exampleNames) expect(result.stdout).toContain(`= unchanged ${name}\n`);
    expect(result.stdout).toContain(`revision ${revision} (0 created, 0 updated, 0 deleted, 6 unchanged)`);
    expect(result.stdout).not.toMatch(/^[+~-] /m);

    const asJson = await moat(["policy", "apply", "-f", examples, "--json"], admin);
    expect(json(asJson.stdout)).toEqual({
      dryRun: false,
      revision,
      created: [],
      updated: [],
      unchanged: expect.arrayContaining(exampleNames),
      deleted: [],
    });
  });

  it("--dry-run shows a field-level diff of updated policies and changes nothing", async () => {
    const dir = copyOfExamples();
    const file = join(dir, "prod-readonly.yaml");
    const text = readFileSync(file, "utf8")
      .replace("maxDuration: 8h", "maxDuration: 4h")
      .replace(/ {2}masking:\n(?: {4}.*\n)+/, "")
      .replace(
        "actions: [connect, db:read]\n",
        "actions: [connect, db:read]\n    - name: no-writes\n      effect: deny\n      actions: [db:write]\n",
      );
    writeFileSync(file, text);
    writeFileSync(
      join(dir, "new-one.yaml"),
      badEffect.replace("name: bad", "name: new-one").replace("permit", "allow"),
    );

    const result = await moat(["policy", "apply", "-f", dir, "--dry-run"], admin);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain(
      [
        "+ created new-one",
        "~ updated prod-readonly",
        "    + spec.rules.1",
        "    - spec.masking",
        "    spec.session.maxDuration: 8h -> 4h",
        "= unchanged dba-writes-need-approval",
      ].join("\n"),
    );
    expect(result.stdout).toMatch(
      new RegExp(
        `\ndry run: nothing changed \\(still revision ${revision}; would be 1 created, 1 updated, 0 deleted, 5 unchanged\\)\n$`,
      ),
    );
    expect(result.requests).toEqual(["POST /api/v1/policies/apply", "GET /api/v1/policies/prod-readonly"]);

    const stored = json<{ revision: string; document: { spec: { masking?: unknown } } }>(
      (await moat(["--json", "policy", "get", "prod-readonly"], admin)).stdout,
    );
    expect(stored.revision).toBe(revision);
    expect(stored.document.spec.masking).toBeDefined();
    expect((await moat(["policy", "get", "new-one"], admin)).code).toBe(5);

    const asJson = await moat(["policy", "apply", "-f", dir, "--dry-run", "--json"], admin);
    expect(json(asJson.stdout)).toMatchObject({
      dryRun: true,
      revision,
      created: ["new-one"],
      updated: ["prod-readonly"],
    });
  });

  it("get prints the document as YAML or JSON, and both apply back unchanged", async () => {
    const yaml = await moat(["policy", "get", "prod-readonly"], admin);
    expect(yaml.code, yaml.stderr).toBe(0);
    expect(yaml.stdout).toMatch(/^apiVersion: moat\.dev\/v1\nkind: Policy\nmetadata:\n {2}name: prod-readonly\n/);
    expect(yaml.stdout.indexOf("subjects:")).toBeLessThan(yaml.stdout.indexOf("rules:"));
    expect(yaml.stdout).toContain("    groups: [engineers]\n");
    const original = parsePolicyText(readFileSync(join(examples, "prod-readonly.yaml"), "utf8"));
    expect(parsePolicyText(yaml.stdout)).toEqual(original);

    const asJson = await moat(["policy", "get", "prod-readonly", "-o", "json"], admin);
    expect(asJson.code).toBe(0);
    expect(json(asJson.stdout)).toEqual(original[0]);

    // Every example, printed as YAML and applied back: nothing changes.
    const all = tempDir("moat-roundtrip-all-");
    for (const name of exampleNames) {
      const got = await moat(["policy", "get", name], admin);
      expect(got.code, got.stderr).toBe(0);
      writeFileSync(join(all, `${name}.yaml`), got.stdout);
    }
    const again = await moat(["--json", "policy", "apply", "-f", all], admin);
    expect(json(again.stdout)).toMatchObject({ created: [], updated: [], revision });

    const dir = tempDir("moat-roundtrip-");
    writeFileSync(join(dir, "a.yaml"), yaml.stdout);
    writeFileSync(join(dir, "b.json"), asJson.stdout.replace("prod-readonly", "prod-readonly-copy"));
    const back = await moat(["policy", "apply", "-f", join(dir, "a.yaml"), join(dir, "b.json")], admin);
    expect(back.code, back.stderr).toBe(0);
    expect(back.stdout).toContain("= unchanged prod-readonly\n");
    expect(back.stdout).toContain("+ created prod-readonly-copy\n");

    const record = await moat(["--json", "policy", "get", "prod-readonly"], admin);
    expect(json(record.stdout)).toMatchObject({ name: "prod-readonly", revision, updatedBy: "admin@moat.local" });
    expect((await moat(["policy", "get", "nope"], admin)).code).toBe(5);
    expect((await moat(["policy", "get", "prod-readonly", "-o", "xml"], admin)).code).toBe(2);
  });

  it("list shows the stored policies; a member may not (exit 4)", async () => {
    const result = await moat(["policy", "list"], admin);
    expect(result.code, result.stderr).toBe(0);
    const lines = result.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^NAME +REVISION +RULES +TESTS +UPDATED BY +UPDATED +DESCRIPTION$/);
    expect(lines.find((l) => l.startsWith("prod-readonly "))).toMatch(
      new RegExp(
        `^prod-readonly +${revision} +1 +3 +admin@moat\\.local +(just now|\\d+s ago) +Read-only production for engineers$`,
      ),
    );
    const items = json<{ items: { name: string }[] }>((await moat(["policies", "ls", "--json"], admin)).stdout).items;
    expect(items.map((i) => i.name).sort()).toEqual([...exampleNames, "prod-readonly-copy"].sort());
    expect((await moat(["policy", "list"], member)).code).toBe(4);
  });

  it("delete asks for confirmation like agents delete", async () => {
    const refused = await moat(["policy", "delete", "prod-readonly-copy"], admin);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('refusing to delete policy "prod-readonly-copy" without confirmation');
    expect((await moat(["policy", "get", "prod-readonly-copy"], admin)).code).toBe(0);

    const deleted = await moat(["policy", "rm", "prod-readonly-copy", "--yes"], admin);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect(deleted.stdout).toContain("Deleted policy prod-readonly-copy");
    expect((await moat(["policy", "get", "prod-readonly-copy"], admin)).code).toBe(5);
    expect((await moat(["policy", "delete", "prod-readonly-copy", "--yes"], admin)).code).toBe(5);
  });

  it("--prune deletes stored policies that are not in the files", async () => {
    const dir = tempDir("moat-prune-");
    for (const name of ["prod-readonly.yaml", "etl-copy-out.yaml"]) copyFileSync(join(examples, name), join(dir, name));

    const dry = await moat(["policy", "apply", "-f", dir, "--prune", "--dry-run"], admin);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain("- deleted oncall-night-shell\n");
    expect(dry.stdout).toContain("would be 0 created, 0 updated, 4 deleted, 2 unchanged");
    expect(json<{ items: unknown[] }>((await moat(["--json", "policy", "list"], admin)).stdout).items).toHaveLength(6);

    const result = await moat(["policy", "apply", "-f", dir, "--prune"], admin);
    expect(result.code, result.stderr).toBe(0);
    for (const name of ["dba-ddl-in-window", "dba-writes-need-approval", "ddl-change-window", "oncall-night-shell"])
      expect(result.stdout).toContain(`- deleted ${name}\n`);
    expect(result.stdout).toMatch(/^revision \d+ \(0 created, 0 updated, 4 deleted, 2 unchanged\)$/m);
    const items = json<{ items: { name: string }[] }>((await moat(["--json", "policy", "list"], admin)).stdout).items;
    expect(items.map((i) => i.name).sort()).toEqual(["etl-copy-out", "prod-readonly"]);
  });
});

describe("policy simulate", () => {
  beforeAll(async () => {
    const result = await moat(["policy", "apply", "-f", examples, "--prune"], admin);
    expect(result.code, result.stderr).toBe(0);
  });

  const orders = ["--resource", "orders-db", "--type", "postgres", "--label", "env=prod"];

  it("ALLOW with the obligations of the applicable policies", async () => {
    const result = await moat(
      [
        "policy",
        "simulate",
        "--user",
        "alice@example.com",
        "--group",
        "engineers",
        ...orders,
        "--action",
        "db:read",
        "--table",
        "public.orders",
      ],
      admin,
    );
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(
      /^ALLOW {2}prod-readonly\/read {2}db:read on orders-db \(table public\.orders\) is allowed/,
    );
    expect(result.stdout).toMatch(/^ {2}allow +prod-readonly\/read +public\.orders$/m);
    expect(result.stdout).toMatch(/^ {2}record: +yes$/m);
    expect(result.stdout).toMatch(/^ {2}max session: +8h$/m);
    expect(result.stdout).toMatch(
      /^ {2}masking: +2 rules: columns email, \*\.card_number \(partial\); detectors credit-card, api-key \(full\)$/m,
    );
    expect(result.stdout).toMatch(/^Policy revision \d+\.$/m);
  });

  it("REVIEW names the approvers; without a reason it is a DENY, still exit 0", async () => {
    const write = [
      "--user",
      "dana@example.com",
      "--group",
      "dbas",
      ...orders,
      "--action",
      "db:write",
      "--table",
      "public.orders",
    ];
    const review = await moat(["policy", "simulate", ...write, "--reason", "INC-42"], admin);
    expect(review.code, review.stderr).toBe(0);
    expect(review.stdout).toMatch(
      /^REVIEW {2}dba-writes-need-approval\/writes {2}Writes to production need a second pair of eyes\n/,
    );
    expect(review.stdout).toMatch(/^ {2}approvers: +groups dbas, oncall-leads \(1 approval\)$/m);

    const deny = await moat(["policy", "simulate", ...write], admin);
    expect(deny.code).toBe(0);
    expect(deny.stdout).toMatch(/^DENY {2}dba-writes-need-approval\/writes {2}.*: a reason is required\n/);
  });

  it("DENY by rule at a given time, and the default deny", async () => {
    const tuesday = await moat(
      [
        "policy",
        "simulate",
        "--user",
        "dana@example.com",
        "--group",
        "dbas",
        ...orders,
        "--action",
        "db:ddl",
        "--time",
        "2026-11-24T02:30:00+01:00",
      ],
      admin,
    );
    expect(tuesday.code, tuesday.stderr).toBe(0);
    expect(tuesday.stdout).toMatch(
      /^DENY {2}ddl-change-window\/no-ddl-outside-window {2}DDL on production only in the Saturday 02:00-04:00 change window\n/,
    );
    expect(tuesday.stdout).toMatch(/^ {2}deny +ddl-change-window\/no-ddl-outside-window +-$/m);
    expect(tuesday.stdout).toMatch(/^ {2}allow +dba-ddl-in-window\/ddl +-$/m);

    const saturday = await moat(
      [
        "--json",
        "policy",
        "simulate",
        "--user",
        "dana@example.com",
        "--group",
        "dbas",
        ...orders,
        "--action",
        "db:ddl",
        "--time",
        "2026-11-28T02:30:00+01:00",
      ],
      admin,
    );
    expect(json(saturday.stdout)).toMatchObject({
      effect: "allow",
      rule: "dba-ddl-in-window/ddl",
      matched: [{ effect: "allow" }],
    });

    const nobody = await moat(
      ["policy", "simulate", "--user", "bob@example.com", ...orders, "--action", "db:read"],
      admin,
    );
    expect(nobody.code).toBe(0);
    expect(nobody.stdout).toMatch(
      /^DENY {2}\(default deny\) {2}no policy allows db:read on orders-db for bob@example\.com\n/,
    );
    expect(nobody.stdout).toContain("Matched rules: none, so the default deny applies.");
  });

  it("service accounts, members and bad input", async () => {
    const etl = await moat(
      [
        "--json",
        "policy",
        "simulate",
        "--user",
        "etl",
        "--service-account",
        "--resource",
        "warehouse",
        "--type",
        "postgres",
        "--action",
        "db:copy-out",
        "--table",
        "analytics.events",
      ],
      admin,
    );
    expect(json(etl.stdout)).toMatchObject({ effect: "allow", rule: "etl-copy-out/copy-out-analytics" });

    const self = await moat(["policy", "simulate", "--user", memberEmail, ...orders, "--action", "db:read"], member);
    expect(self.code, self.stderr).toBe(0);
    expect(self.stdout).toMatch(/^DENY /);
    const other = await moat(
      ["policy", "simulate", "--user", "alice@example.com", ...orders, "--action", "db:read"],
      member,
    );
    expect(other.code).toBe(4);
    expect(other.stderr).toContain("members may simulate only their own access (permission_denied)");

    const unknown = await moat(
      ["policy", "simulate", "--user", "a@example.com", "--resource", "nowhere", "--action", "connect"],
      admin,
    );
    expect(unknown.code).toBe(5);
    expect(unknown.stderr).toContain('no resource named "nowhere"');

    expect(
      (
        await moat(
          ["policy", "simulate", "--user", "a", ...orders, "--action", "connect", "--label", "noequals"],
          admin,
        )
      ).code,
    ).toBe(2);
    expect(
      (await moat(["policy", "simulate", "--user", "a", ...orders, "--action", "connect", "--time", "tuesday"], admin))
        .code,
    ).toBe(2);
    expect((await moat(["policy", "simulate", "--user", "a", ...orders], admin)).code).toBe(2);
  });
});
