/**
 * The policy document format (apiVersion moat.dev/v1, kind Policy) as a TypeBox schema, and its
 * parser: YAML or JSON text -> validated documents, with errors that point at file, line and field.
 * Pure: no I/O, no clock.
 */
import { FormatRegistry, Type, type Static } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import { isMap, isSeq, LineCounter, parseAllDocuments, type Node as YamlNode } from "yaml";

// RFC 3339 date-time with an explicit offset (TypeBox ships no formats of its own).
if (!FormatRegistry.Has("date-time")) {
  FormatRegistry.Set(
    "date-time",
    (v) =>
      /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/i.test(v) && !Number.isNaN(Date.parse(v)),
  );
}

const Slug = Type.String({ pattern: "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", maxLength: 63 });
const Pattern = Type.String({ minLength: 1, maxLength: 253 });
const Patterns = Type.Array(Pattern, { minItems: 1, maxItems: 1000 });
const Clock = Type.String({ pattern: "^([01][0-9]|2[0-3]):[0-5][0-9]$", description: "HH:MM, 24-hour" });
const Day = Type.Union(["mon", "tue", "wed", "thu", "fri", "sat", "sun"].map((d) => Type.Literal(d)));
const strict = { additionalProperties: false } as const;

export const RESOURCE_TYPES = ["postgres", "ssh", "kubernetes", "http"] as const;
export type ResourceType = (typeof RESOURCE_TYPES)[number];

/**
 * Every action the agents enforce. Patterns in rules may use `*` (e.g. `db:*`, `ssh:*`, `*`);
 * Kubernetes actions are `k8s:<verb>` and may grow without a format change.
 */
export const ACTIONS = [
  "connect",
  "db:read",
  "db:write",
  "db:ddl",
  "db:admin",
  "db:dynamic",
  "db:copy-in",
  "db:copy-out",
  "db:function",
  "ssh:shell",
  "ssh:exec",
  "ssh:sftp",
  "ssh:port-forward",
  "k8s:get",
  "k8s:list",
  "k8s:watch",
  "k8s:create",
  "k8s:update",
  "k8s:patch",
  "k8s:delete",
  "k8s:exec",
  "k8s:port-forward",
  "k8s:logs",
] as const;

export const TimeWindowSchema = Type.Object(
  {
    days: Type.Optional(Type.Array(Day, { minItems: 1, maxItems: 7 })),
    /** Start, inclusive. A window whose `to` is not after `from` crosses midnight (`from` = `to`: all day). */
    from: Clock,
    /** End, exclusive. */
    to: Clock,
    /** IANA time zone, e.g. "Europe/Paris". Default UTC. */
    timezone: Type.Optional(Type.String({ minLength: 1 })),
  },
  strict,
);
export type TimeWindow = Static<typeof TimeWindowSchema>;

export const ConditionsSchema = Type.Object(
  {
    /** The rule applies only inside one of these windows. */
    timeWindows: Type.Optional(Type.Array(TimeWindowSchema, { minItems: 1, maxItems: 32 })),
    /** The rule applies only outside all of these windows ("outside the change window"). */
    exceptTimeWindows: Type.Optional(Type.Array(TimeWindowSchema, { minItems: 1, maxItems: 32 })),
    /** The rule applies only to connections from these networks. */
    sourceCidrs: Type.Optional(
      Type.Array(Type.String({ minLength: 3, maxLength: 49 }), { minItems: 1, maxItems: 256 }),
    ),
    /** The rule applies only to connections from outside all of these networks. */
    exceptSourceCidrs: Type.Optional(
      Type.Array(Type.String({ minLength: 3, maxLength: 49 }), { minItems: 1, maxItems: 256 }),
    ),
    notBefore: Type.Optional(Type.String({ format: "date-time" })),
    expiresAt: Type.Optional(Type.String({ format: "date-time" })),
    /** The user must give a reason; without one, the rule denies and says so. */
    requireReason: Type.Optional(Type.Boolean()),
  },
  strict,
);
export type Conditions = Static<typeof ConditionsSchema>;

export const RuleSchema = Type.Object(
  {
    name: Slug,
    effect: Type.Union([Type.Literal("allow"), Type.Literal("deny"), Type.Literal("review")]),
    actions: Type.Array(Pattern, { minItems: 1, maxItems: 64 }),
    /** Postgres scopes: `schema.table` patterns (`analytics.*`); a pattern without a dot matches that table in any schema. */
    tables: Type.Optional(Patterns),
    /** SSH exec scopes: command-line patterns (`systemctl status *`). */
    commands: Type.Optional(Patterns),
    conditions: Type.Optional(ConditionsSchema),
    /** Shown to the user when this rule denies or holds an action. */
    message: Type.Optional(Type.String({ maxLength: 500 })),
    /** Who may approve, for `review` rules. */
    approvers: Type.Optional(
      Type.Object(
        {
          users: Type.Optional(Patterns),
          groups: Type.Optional(Patterns),
          minApprovals: Type.Optional(Type.Integer({ minimum: 1, maximum: 10 })),
        },
        strict,
      ),
    ),
  },
  strict,
);
export type Rule = Static<typeof RuleSchema>;

export const DETECTORS = ["email", "credit-card", "phone", "iban", "national-id", "api-key", "jwt"] as const;

export const MaskRuleSchema = Type.Object(
  {
    /** Column patterns: `email`, `*_ssn`, `users.email`, `public.users.email`. */
    columns: Type.Optional(Patterns),
    /** Content detectors applied to every text value of the result. */
    detectors: Type.Optional(Type.Array(Type.Union(DETECTORS.map((d) => Type.Literal(d))), { minItems: 1 })),
    /** How values are redacted (default "full"). */
    style: Type.Optional(
      Type.Union([Type.Literal("full"), Type.Literal("partial"), Type.Literal("hash"), Type.Literal("null")]),
    ),
  },
  strict,
);
export type MaskRule = Static<typeof MaskRuleSchema>;

export const PolicyTestSchema = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 200 }),
    request: Type.Object(
      {
        user: Type.String({ minLength: 1 }),
        groups: Type.Optional(Type.Array(Type.String())),
        serviceAccount: Type.Optional(Type.Boolean()),
        resource: Type.String({ minLength: 1 }),
        resourceType: Type.Optional(Type.Union(RESOURCE_TYPES.map((t) => Type.Literal(t)))),
        labels: Type.Optional(Type.Record(Type.String(), Type.String())),
        action: Type.String({ minLength: 1 }),
        tables: Type.Optional(Type.Array(Type.String())),
        command: Type.Optional(Type.String()),
        sourceIp: Type.Optional(Type.String()),
        time: Type.Optional(Type.String({ format: "date-time" })),
        reason: Type.Optional(Type.String()),
      },
      strict,
    ),
    expect: Type.Union([Type.Literal("allow"), Type.Literal("deny"), Type.Literal("review")]),
    /** Optionally, which rule must decide (`policy/rule`). */
    expectRule: Type.Optional(Type.String()),
  },
  strict,
);
export type PolicyTest = Static<typeof PolicyTestSchema>;

export const PolicySchema = Type.Object(
  {
    apiVersion: Type.Literal("moat.dev/v1"),
    kind: Type.Literal("Policy"),
    metadata: Type.Object(
      {
        name: Slug,
        description: Type.Optional(Type.String({ maxLength: 1000 })),
      },
      strict,
    ),
    spec: Type.Object(
      {
        subjects: Type.Object(
          {
            users: Type.Optional(Patterns),
            groups: Type.Optional(Patterns),
            serviceAccounts: Type.Optional(Patterns),
          },
          strict,
        ),
        resources: Type.Object(
          {
            names: Type.Optional(Patterns),
            types: Type.Optional(Type.Array(Type.Union(RESOURCE_TYPES.map((t) => Type.Literal(t))), { minItems: 1 })),
            labels: Type.Optional(
              Type.Record(Type.String({ minLength: 1, maxLength: 63 }), Type.String({ maxLength: 255 })),
            ),
          },
          strict,
        ),
        rules: Type.Array(RuleSchema, { minItems: 1, maxItems: 1000 }),
        masking: Type.Optional(Type.Array(MaskRuleSchema, { maxItems: 100 })),
        session: Type.Optional(
          Type.Object(
            {
              record: Type.Optional(Type.Boolean()),
              /** Longest session, e.g. "8h", "30m". */
              maxDuration: Type.Optional(Type.String({ pattern: "^[0-9]+(s|m|h|d)$" })),
            },
            strict,
          ),
        ),
        tests: Type.Optional(Type.Array(PolicyTestSchema, { maxItems: 1000 })),
      },
      strict,
    ),
  },
  strict,
);
export type PolicyDocument = Static<typeof PolicySchema>;

/** A problem found in a policy document, located as precisely as the input allows. */
export interface PolicyProblem {
  /** Source name (file) the problem is in, when known. */
  source?: string;
  /** Index of the document in a multi-document YAML stream. */
  document?: number;
  /** Field path, e.g. "spec.rules.0.effect". */
  field: string;
  /** 1-based line and column, when the input was text. */
  line?: number;
  column?: number;
  message: string;
}

/** Thrown with every problem of a set of policy documents. */
export class PolicyError extends Error {
  readonly problems: PolicyProblem[];
  constructor(problems: PolicyProblem[]) {
    super(
      `invalid policy:\n${problems
        .map(
          (p) =>
            `  - ${p.source ? `${p.source}:` : ""}${p.line ? `${p.line}:${p.column ?? 1}: ` : ""}${p.field}: ${p.message}`,
        )
        .join("\n")}`,
    );
    this.name = "PolicyError";
    this.problems = problems;
  }
}

function fieldOf(path: string): string {
  return path.replace(/^\//, "").replace(/\//g, ".") || "(document)";
}

/** Schema problems of one already-parsed document value (no positions). */
export function schemaProblems(value: unknown): PolicyProblem[] {
  const problems: PolicyProblem[] = [];
  for (const error of Value.Errors(PolicySchema, value)) {
    const choices = (error.schema as { anyOf?: { const?: unknown }[] }).anyOf?.map((branch) => branch.const);
    const message = error.message.startsWith("Unexpected property")
      ? "unknown field"
      : choices && choices.length > 0 && choices.every((c) => typeof c === "string")
        ? `must be one of: ${choices.join(", ")}`
        : error.message.toLowerCase();
    problems.push({ field: fieldOf(error.path), message });
  }
  // Unions report one error per branch; keep one per field.
  const seen = new Set<string>();
  return problems.filter((p) => {
    const key = p.field;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

function locate(root: YamlNode | null, field: string, counter: LineCounter): { line?: number; column?: number } {
  if (!root || field === "(document)") return {};
  let node: unknown = root;
  let located: unknown = root;
  for (const key of field.split(".")) {
    if (isMap(node)) {
      const pair = node.items.find((item) => String((item.key as { value?: unknown })?.value ?? item.key) === key);
      if (!pair) break;
      located = pair.key ?? located;
      node = pair.value;
      if (node) located = node;
    } else if (isSeq(node)) {
      const item = node.items[Number(key)];
      if (!item) break;
      node = item;
      located = item;
    } else break;
  }
  const range = (located as { range?: [number, number, number] }).range;
  if (!range) return {};
  const pos = counter.linePos(range[0]);
  return { line: pos.line, column: pos.col };
}

/**
 * Parses YAML (one or more `---` documents) or JSON (one document or an array) into validated policy
 * documents. Throws PolicyError listing every problem with its line and field.
 */
export function parsePolicyText(text: string, source?: string): PolicyDocument[] {
  const counter = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter: counter, prettyErrors: false, uniqueKeys: true });
  const problems: PolicyProblem[] = [];
  const out: PolicyDocument[] = [];
  const list = Array.isArray(docs) ? docs : [docs];
  list.forEach((doc, index) => {
    for (const error of doc.errors) {
      const pos = counter.linePos(error.pos[0]);
      problems.push({
        ...(source ? { source } : {}),
        document: index,
        field: "(syntax)",
        line: pos.line,
        column: pos.col,
        message: error.message.split("\n")[0] ?? "syntax error",
      });
    }
    if (doc.errors.length > 0) return;
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: 100 });
    } catch (error) {
      // Unresolved aliases, alias bombs: reported like syntax errors.
      problems.push({
        ...(source ? { source } : {}),
        document: index,
        field: "(syntax)",
        message: (error as Error).message,
      });
      return;
    }
    if (value === null || value === undefined) return;
    const values = Array.isArray(value) ? value : [value];
    values.forEach((v, i) => {
      const found = schemaProblems(v);
      for (const p of found) {
        const field = Array.isArray(value) ? `${i}.${p.field}` : p.field;
        problems.push({
          ...(source ? { source } : {}),
          document: index,
          ...p,
          field: p.field,
          ...locate(doc.contents, field, counter),
        });
      }
      if (found.length === 0) out.push(v as PolicyDocument);
    });
  });
  if (problems.length > 0) throw new PolicyError(problems);
  return out;
}
