/**
 * The policy engine: compiles validated documents into an indexed form, and evaluates a request to
 * a verdict. The one evaluator of Moat: the control plane simulates with it, the agent enforces
 * with it. Pure: no I/O; the request carries the time.
 *
 * Semantics (docs/policy.md): default deny; among the rules that apply, any deny beats any review,
 * which beats any allow. A request that touches several tables is decided per table and the
 * strictest outcome wins.
 */
import {
  ACTIONS,
  PolicyError,
  type MaskRule,
  type PolicyDocument,
  type PolicyProblem,
  type ResourceType,
  type Rule,
} from "./document.js";
import {
  anyOf,
  checkTimeZone,
  cidrMatcher,
  commandMatcher,
  globMatcher,
  parseIp,
  timeWindowMatcher,
  ZonedClock,
  type Matcher,
} from "./match.js";

export type Effect = "allow" | "deny" | "review";

/** What is being decided. `now` is epoch milliseconds. */
export interface PolicyRequest {
  user: string;
  groups: readonly string[];
  serviceAccount?: boolean;
  resource: { name: string; type: ResourceType; labels: Readonly<Record<string, string>> };
  action: string;
  /** Tables the statement touches, as `schema.table`. */
  tables?: readonly string[];
  /** The command line, for ssh:exec. */
  command?: string;
  sourceIp?: string;
  reason?: string;
  now: number;
}

export interface MatchedRule {
  /** `policy/rule` */
  rule: string;
  effect: Effect;
  table?: string;
}

export interface Approvers {
  users: string[];
  groups: string[];
  minApprovals: number;
}

/** Duties that come with a verdict: what to mask, whether to record, session limits, who approves. */
export interface Obligations {
  mask: MaskRule[];
  record: boolean;
  maxSessionSeconds?: number;
  approvers?: Approvers;
}

export interface Verdict {
  effect: Effect;
  /** The deciding rule (`policy/rule`), "" for the default deny. */
  rule: string;
  /** Safe to show to the user. */
  message: string;
  obligations: Obligations;
  /** Every rule that applied (filled when evaluated with `explain`), for explanations. */
  matched: MatchedRule[];
}

interface CompiledRule {
  id: string;
  /** Position in the canonical order (policies by name, rules as written): breaks ties between equal effects. */
  order: number;
  effect: Effect;
  rule: Rule;
  actionMatcher: Matcher;
  tables?: Matcher;
  commands?: Matcher;
  when: ((req: PolicyRequest, ctx: RequestContext) => boolean)[];
  requireReason: boolean;
  approvers?: Approvers;
}

/** Per-request values derived once, shared by every rule. */
class RequestContext {
  readonly user: string;
  private parsed = false;
  private address: Uint16Array | undefined;
  constructor(private readonly req: PolicyRequest) {
    this.user = lower(req.user);
  }
  /** Parsed source address, on first use; undefined when absent or invalid (CIDR conditions then fail). */
  get ip(): Uint16Array | undefined {
    if (!this.parsed) {
      this.parsed = true;
      this.address = this.req.sourceIp === undefined ? undefined : parseIp(this.req.sourceIp);
    }
    return this.address;
  }
}

interface CompiledPolicy {
  name: string;
  subject: (req: PolicyRequest, ctx: RequestContext) => boolean;
  resource: (res: PolicyRequest["resource"]) => boolean;
  /** Rules per known action (wildcards expanded at compile time). */
  byAction: Map<string, CompiledRule[]>;
  /** All rules, for actions outside the known list (tested by pattern). */
  rules: CompiledRule[];
  mask: MaskRule[];
  record: boolean;
  maxSessionSeconds?: number;
}

/** The compiled, indexed policy set. Immutable once built. */
export interface CompiledPolicies {
  readonly policyNames: readonly string[];
  readonly ruleCount: number;
  /**
   * Whether any rule has a time condition (time windows, notBefore, expiresAt): only then can the
   * same request get another verdict later under the same policies (enforcers may cache verdicts
   * otherwise).
   */
  readonly timeDependent: boolean;
  /** @internal */
  readonly byResourceName: ReadonlyMap<string, readonly CompiledPolicy[]>;
  /** @internal */
  readonly generic: readonly CompiledPolicy[];
}

const KNOWN_ACTIONS = new Set<string>(ACTIONS);
/** Longest command line decided (longer ones are denied). */
export const MAX_COMMAND_LENGTH = 8192;
const lower = (s: string) => s.toLowerCase();

function durationSeconds(text: string): number {
  const n = Number(text.slice(0, -1));
  const unit = text.slice(-1);
  return n * (unit === "s" ? 1 : unit === "m" ? 60 : unit === "h" ? 3600 : 86400);
}

/** Table pattern: `schema.table` globs; a pattern without a dot matches that table in any schema. */
function tableMatcher(patterns: readonly string[]): Matcher {
  return anyOf(patterns.map((p) => (p.includes(".") ? p : `*.${p}`)));
}

/**
 * Compiles validated documents. Semantic problems (duplicate names, unknown actions, bad CIDRs or
 * time zones) are reported together as a PolicyError pointing at each field.
 */
export function compilePolicies(
  documents: readonly PolicyDocument[],
  clock: ZonedClock = new ZonedClock(),
): CompiledPolicies {
  const problems: PolicyProblem[] = [];
  const names = new Set<string>();
  const byResourceName = new Map<string, CompiledPolicy[]>();
  const generic: CompiledPolicy[] = [];
  let ruleCount = 0;
  let timeDependent = false;

  // Canonical order (by policy name) so that which of several equally strong rules is reported
  // does not depend on the order documents arrive in (files, store, bundle).
  const ordered = documents
    .map((doc, docIndex) => ({ doc, docIndex }))
    .sort((a, b) =>
      a.doc.metadata.name < b.doc.metadata.name
        ? -1
        : a.doc.metadata.name > b.doc.metadata.name
          ? 1
          : a.docIndex - b.docIndex,
    );
  ordered.forEach(({ doc, docIndex }) => {
    const name = doc.metadata.name;
    const problem = (field: string, message: string) =>
      problems.push({ document: docIndex, field: `${name}: ${field}`, message });
    if (names.has(name)) problem("metadata.name", "another policy has this name");
    names.add(name);

    const { subjects, resources } = doc.spec;
    if (!subjects.users && !subjects.groups && !subjects.serviceAccounts)
      problem("spec.subjects", "name at least one of users, groups, serviceAccounts");
    if (!resources.names && !resources.types && !resources.labels)
      problem("spec.resources", "name at least one of names, types, labels");

    const users = subjects.users ? anyOf(subjects.users, lower) : undefined;
    const groups = subjects.groups ? anyOf(subjects.groups) : undefined;
    const serviceAccounts = subjects.serviceAccounts ? anyOf(subjects.serviceAccounts, lower) : undefined;
    const subject = (req: PolicyRequest, ctx: RequestContext) => {
      const who = ctx.user;
      if (req.serviceAccount) return serviceAccounts !== undefined && serviceAccounts(who);
      if (users?.(who)) return true;
      if (groups) for (const g of req.groups) if (groups(g)) return true;
      return false;
    };

    const resource = resourceMatcher(resources);

    const ruleNames = new Set<string>();
    const rules: CompiledRule[] = [];
    doc.spec.rules.forEach((rule, i) => {
      const field = (f: string) => `spec.rules.${i}.${f}`;
      if (ruleNames.has(rule.name)) problem(field("name"), "another rule of this policy has this name");
      ruleNames.add(rule.name);
      rule.actions.forEach((a, j) => {
        const m = globMatcher(a);
        if (!ACTIONS.some((known) => m(known)) && !a.startsWith("k8s:"))
          problem(`${field("actions")}.${j}`, `unknown action "${a}" (known: ${ACTIONS.join(", ")})`);
      });
      if (rule.approvers && rule.effect !== "review") problem(field("approvers"), "only review rules have approvers");
      const when: ((req: PolicyRequest, ctx: RequestContext) => boolean)[] = [];
      const c = rule.conditions ?? {};
      // An unknown or unparseable source address fails closed: allow rules that name networks do
      // not apply, deny and review rules that name networks do.
      const unknownSource = rule.effect !== "allow";
      for (const key of ["sourceCidrs", "exceptSourceCidrs"] as const) {
        const cidrs = c[key];
        if (!cidrs) continue;
        try {
          const inside = cidrMatcher(cidrs);
          const wantInside = key === "sourceCidrs";
          when.push((_req, ctx) => (ctx.ip === undefined ? unknownSource : inside(ctx.ip) === wantInside));
        } catch (error) {
          problem(field(`conditions.${key}`), (error as Error).message);
        }
      }
      for (const key of ["timeWindows", "exceptTimeWindows"] as const) {
        const windows = c[key];
        if (!windows) continue;
        const matchers = windows.flatMap((w, k) => {
          try {
            if (w.timezone) checkTimeZone(w.timezone);
            return [timeWindowMatcher(w, clock)];
          } catch {
            problem(field(`conditions.${key}.${k}.timezone`), `unknown time zone "${w.timezone}"`);
            return [];
          }
        });
        if (key === "timeWindows") when.push((req) => matchers.some((m) => m(req.now)));
        else when.push((req) => !matchers.some((m) => m(req.now)));
      }
      if (c.timeWindows || c.exceptTimeWindows || c.notBefore || c.expiresAt) timeDependent = true;
      if (c.notBefore) {
        const t = Date.parse(c.notBefore);
        when.push((req) => req.now >= t);
      }
      if (c.expiresAt) {
        const t = Date.parse(c.expiresAt);
        when.push((req) => req.now < t);
      }
      rules.push({
        id: `${name}/${rule.name}`,
        order: ruleCount + rules.length,
        effect: rule.effect,
        rule,
        actionMatcher: anyOf(rule.actions),
        ...(rule.tables ? { tables: tableMatcher(rule.tables) } : {}),
        // Allow patterns are strict (`*` never spans shell control characters); deny and review
        // patterns are broad (`*` spans anything), so `rm *` also catches `rm -rf / ;`.
        ...(rule.commands ? { commands: commandMatcher(rule.commands, rule.effect === "allow") } : {}),
        when,
        requireReason: c.requireReason === true,
        ...(rule.effect === "review"
          ? {
              approvers: {
                users: rule.approvers?.users ?? [],
                groups: rule.approvers?.groups ?? [],
                minApprovals: rule.approvers?.minApprovals ?? 1,
              },
            }
          : {}),
      });
    });
    ruleCount += rules.length;

    const byAction = new Map<string, CompiledRule[]>();
    for (const action of ACTIONS) {
      const matching = rules.filter((r) => r.actionMatcher(action));
      if (matching.length > 0) byAction.set(action, matching);
    }
    const policy: CompiledPolicy = {
      name,
      subject,
      resource,
      byAction,
      rules,
      mask: doc.spec.masking ?? [],
      record: doc.spec.session?.record === true,
      ...(doc.spec.session?.maxDuration ? { maxSessionSeconds: durationSeconds(doc.spec.session.maxDuration) } : {}),
    };
    const exactNames = resources.names?.every((n) => !n.includes("*")) ? resources.names : undefined;
    if (exactNames) {
      for (const n of exactNames) {
        const list = byResourceName.get(n) ?? [];
        list.push(policy);
        byResourceName.set(n, list);
      }
    } else generic.push(policy);
  });

  if (problems.length > 0) throw new PolicyError(problems);
  return { policyNames: [...names], ruleCount, timeDependent, byResourceName, generic };
}

/** A resource as policies see it. */
export type PolicyResource = PolicyRequest["resource"];

/**
 * Whether a policy's `spec.resources` selects `resource` (every given criterion must hold). Used
 * by the evaluator and by the control plane to put in an agent's bundle only what concerns it.
 */
export function resourceMatcher(selector: PolicyDocument["spec"]["resources"]): (resource: PolicyResource) => boolean {
  const nameMatcher = selector.names ? anyOf(selector.names) : undefined;
  const types = selector.types ? new Set<string>(selector.types) : undefined;
  const labels = selector.labels ? Object.entries(selector.labels).map(([k, v]) => [k, globMatcher(v)] as const) : [];
  return (res) =>
    (!nameMatcher || nameMatcher(res.name)) &&
    (!types || types.has(res.type)) &&
    labels.every(([k, m]) => Object.hasOwn(res.labels, k) && m(res.labels[k] as string));
}

const RANK: Record<Effect, number> = { allow: 1, review: 2, deny: 3 };

/** The strongest applicable rule for one table (or none), before its message is written. */
interface Outcome {
  effect: Effect;
  rule: CompiledRule | undefined;
  table: string | undefined;
  reasonMissing: boolean;
}

function messageOf(outcome: Outcome, req: PolicyRequest): string {
  const what = `${req.action} on ${req.resource.name}${outcome.table !== undefined ? ` (table ${outcome.table})` : ""}`;
  const rule = outcome.rule;
  if (!rule) return `no policy allows ${what} for ${req.user}`;
  const base =
    rule.rule.message ??
    (rule.effect === "deny"
      ? `${what} is denied by policy rule ${rule.id}`
      : rule.effect === "review"
        ? `${what} requires approval (policy rule ${rule.id})`
        : `${what} is allowed by policy rule ${rule.id}`);
  if (outcome.reasonMissing)
    return rule.rule.message
      ? `${rule.rule.message}: a reason is required`
      : `${what} requires a reason (policy rule ${rule.id})`;
  return base;
}

/** Whether `rule` applies to the request for one table (or none: `table` undefined). */
function applies(rule: CompiledRule, req: PolicyRequest, ctx: RequestContext, table: string | undefined): boolean {
  if (rule.tables) {
    if (table === undefined) {
      // A statement that touches no table: table-scoped allow rules apply (nothing falls outside
      // their scope); table-scoped deny and review rules do not (nothing falls inside theirs).
      if (rule.effect !== "allow") return false;
    } else if (!rule.tables(table)) return false;
  }
  if (rule.commands) {
    // `commands` narrows ssh:exec to matching command lines and keeps the rule away from the other
    // SSH actions (a shell is not a listed command); connect and non-SSH actions are unaffected.
    if (req.action === "ssh:exec") {
      if (req.command === undefined || !rule.commands(req.command)) return false;
    } else if (req.action.startsWith("ssh:")) return false;
  }
  for (const condition of rule.when) if (!condition(req, ctx)) return false;
  return true;
}

function decideOne(
  rules: readonly (readonly CompiledRule[])[],
  req: PolicyRequest,
  ctx: RequestContext,
  table: string | undefined,
  matched: MatchedRule[] | undefined,
): Outcome {
  let best: Outcome | undefined;
  for (const list of rules) {
    for (const rule of list) {
      if (!applies(rule, req, ctx, table)) continue;
      const reasonMissing = rule.requireReason && !req.reason?.trim();
      const effect: Effect = reasonMissing ? "deny" : rule.effect;
      matched?.push({ rule: rule.id, effect, ...(table !== undefined ? { table } : {}) });
      if (
        !best ||
        RANK[effect] > RANK[best.effect] ||
        (RANK[effect] === RANK[best.effect] && rule.order < (best.rule?.order ?? Infinity))
      ) {
        best = { effect, rule, table, reasonMissing };
      }
    }
  }
  return best ?? { effect: "deny", rule: undefined, table, reasonMissing: false };
}

export interface EvaluateOptions {
  /** Also list every rule that applied (`Verdict.matched`), for simulation and explanations. */
  explain?: boolean;
}

/** Decides `req` against `policies`. */
export function evaluate(policies: CompiledPolicies, req: PolicyRequest, options: EvaluateOptions = {}): Verdict {
  if (!Number.isFinite(req.now) || (req.command !== undefined && req.command.length > MAX_COMMAND_LENGTH)) {
    // No valid time or an oversized command line: nothing can be decided, so nothing is allowed.
    return new LazyVerdict(
      { effect: "deny", rule: undefined, table: undefined, reasonMissing: false },
      req,
      { mask: [], record: false },
      [],
    );
  }
  const ctx = new RequestContext(req);
  const applicable = applicablePolicies(policies, req, ctx);
  const rules = actionRules(applicable, req.action);
  if (!rules) {
    // An action the policy language does not define is never allowed, whatever wildcards say.
    return new LazyVerdict(
      { effect: "deny", rule: undefined, table: undefined, reasonMissing: false },
      req,
      { mask: [], record: false },
      [],
    );
  }

  const matched: MatchedRule[] | undefined = options.explain ? [] : undefined;
  const tables = req.tables ?? [];
  let outcome = decideOne(rules, req, ctx, tables[0], matched);
  for (let i = 1; i < tables.length && outcome.effect !== "deny"; i++) {
    const next = decideOne(rules, req, ctx, tables[i], matched);
    if (RANK[next.effect] > RANK[outcome.effect]) outcome = next;
  }

  const obligations: Obligations = { mask: [], record: false };
  for (const p of applicable) {
    for (const m of p.mask) obligations.mask.push(m);
    if (p.record) obligations.record = true;
    if (p.maxSessionSeconds !== undefined) {
      obligations.maxSessionSeconds = Math.min(obligations.maxSessionSeconds ?? Infinity, p.maxSessionSeconds);
    }
  }
  if (outcome.effect === "review" && outcome.rule?.approvers) obligations.approvers = outcome.rule.approvers;

  return new LazyVerdict(outcome, req, obligations, matched ?? []);
}

/**
 * Whether any rule could allow (or hold for review) `req.action` for this subject on this resource,
 * whatever the tables, time, source address or reason: the policies' upper bound, for decisions
 * made once per session (the agent opens a read-only database session for a user no rule could let
 * write). Deny rules are not taken into account; conditions count as met.
 */
export function mayAllow(policies: CompiledPolicies, req: Omit<PolicyRequest, "now" | "tables">): boolean {
  const full: PolicyRequest = { ...req, now: 0 };
  const rules = actionRules(applicablePolicies(policies, full, new RequestContext(full)), req.action);
  return rules?.some((list) => list.some((r) => r.effect !== "deny")) ?? false;
}

/** The policies whose subjects and resources cover the request, by name first, then by labels. */
function applicablePolicies(policies: CompiledPolicies, req: PolicyRequest, ctx: RequestContext): CompiledPolicy[] {
  const applicable: CompiledPolicy[] = [];
  const candidates = policies.byResourceName.get(req.resource.name);
  if (candidates) for (const p of candidates) if (p.resource(req.resource) && p.subject(req, ctx)) applicable.push(p);
  for (const p of policies.generic) if (p.resource(req.resource) && p.subject(req, ctx)) applicable.push(p);
  return applicable;
}

/** Each policy's rules for `action`; undefined for an action the policy language does not define. */
function actionRules(applicable: readonly CompiledPolicy[], action: string): (readonly CompiledRule[])[] | undefined {
  const rules: (readonly CompiledRule[])[] = [];
  if (KNOWN_ACTIONS.has(action)) {
    for (const p of applicable) {
      const list = p.byAction.get(action);
      if (list) rules.push(list);
    }
  } else if (action.startsWith("k8s:")) {
    for (const p of applicable) rules.push(p.rules.filter((r) => r.actionMatcher(action)));
  } else {
    return undefined;
  }
  return rules;
}

/** A verdict whose message is written only when read (an allowed query never needs one). */
class LazyVerdict implements Verdict {
  readonly effect: Effect;
  readonly rule: string;
  private text: string | undefined;
  constructor(
    private readonly outcome: Outcome,
    private readonly req: PolicyRequest,
    readonly obligations: Obligations,
    readonly matched: MatchedRule[],
  ) {
    this.effect = outcome.effect;
    this.rule = outcome.rule?.id ?? "";
  }
  get message(): string {
    return (this.text ??= messageOf(this.outcome, this.req));
  }
  toJSON() {
    return {
      effect: this.effect,
      rule: this.rule,
      message: this.message,
      obligations: this.obligations,
      matched: this.matched,
    };
  }
}
