/**
 * Policies as the control plane keeps them: validated with the policy package, stored as canonical
 * JSON, changed atomically with one revision bump per change, compiled once per revision for
 * simulation. Every change tells the bus, so bundles are rebuilt and pushed.
 */
import { AppError, randomId } from "@moat/common";
import {
  compilePolicies,
  evaluate,
  PolicyError,
  schemaProblems,
  type CompiledPolicies,
  type PolicyDocument,
  type PolicyRequest,
  type Verdict,
} from "@moat/policy";
import type { EventBus } from "../bus.js";
import type { PolicyRecord, Store } from "../store/index.js";

/** JSON with object keys sorted, so equal documents have equal text. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(
          Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
        )
      : v,
  );
}

export interface PolicyView {
  name: string;
  revision: string;
  updatedBy: string;
  updatedAt: Date;
  document: PolicyDocument;
}

export interface ApplyResult {
  dryRun: boolean;
  revision: string;
  created: string[];
  updated: string[];
  unchanged: string[];
  deleted: string[];
}

export interface PolicyService {
  list(): Promise<PolicyView[]>;
  get(name: string): Promise<PolicyView>;
  /** Creates or replaces one policy; a no-op (same revision) when nothing changed. */
  put(document: unknown, by: string): Promise<{ view: PolicyView; created: boolean; changed: boolean }>;
  remove(name: string, by: string): Promise<void>;
  /** Makes the stored set match `documents` (and, with `prune`, nothing else). Idempotent. */
  apply(documents: unknown[], options: { prune: boolean; dryRun: boolean }, by: string): Promise<ApplyResult>;
  /** Decides `request` with the stored policies, exactly as an agent would, with the matched rules. */
  simulate(request: PolicyRequest): Promise<Verdict & { revision: string }>;
  /** The stored policies (documents) and the revision they are at. */
  snapshot(): Promise<{ revision: bigint; documents: PolicyDocument[]; compiled: CompiledPolicies }>;
}

function validationError(error: unknown, prefix = ""): AppError {
  if (error instanceof PolicyError) {
    return new AppError("validation_failed", "the policy is invalid: see errors", {
      fields: error.problems.map((p) => ({ field: `${prefix}${p.field}`, message: p.message })),
      cause: error,
    });
  }
  return error as AppError;
}

function validate(document: unknown, prefix = ""): PolicyDocument {
  const problems = schemaProblems(document);
  if (problems.length > 0) {
    throw new AppError("validation_failed", "the policy is invalid: see errors", {
      fields: problems.map((p) => ({ field: `${prefix}${p.field}`, message: p.message })),
    });
  }
  return document as PolicyDocument;
}

export function createPolicyService(deps: {
  store: Pick<Store, "policies" | "counters">;
  bus: Pick<EventBus, "publish">;
  /**
   * Refuses a change of the set from `current` to `proposed` that some agent's bundle could not
   * carry (bundle_too_large); the bundle service's `checkBudget`.
   */
  checkBundles?: (current: PolicyDocument[], proposed: PolicyDocument[]) => Promise<void>;
}): PolicyService {
  const { store, bus } = deps;
  let cache: { revision: bigint; documents: PolicyDocument[]; compiled: CompiledPolicies } | undefined;

  const view = (r: PolicyRecord): PolicyView => ({
    name: r.name,
    revision: r.revision.toString(),
    updatedBy: r.updatedBy,
    updatedAt: r.updatedAt,
    document: JSON.parse(r.document) as PolicyDocument,
  });

  async function snapshot() {
    let revision = await store.counters.get("policy.revision");
    // Revision 0 would read as "no bundle" on the agents: the first bundle is revision 1.
    if (revision === 0n) revision = await store.counters.increment("policy.revision");
    if (cache && cache.revision === revision) return cache;
    const documents = (await store.policies.list()).map((r) => JSON.parse(r.document) as PolicyDocument);
    cache = { revision, documents, compiled: compilePolicies(documents) };
    return cache;
  }

  /** Compiles the set that would result, so cross-policy problems are caught before storing. */
  function checkSet(documents: PolicyDocument[]): void {
    try {
      compilePolicies(documents);
    } catch (error) {
      throw validationError(error);
    }
  }

  async function mustGet(name: string): Promise<PolicyRecord> {
    const record = await store.policies.findByName(name);
    if (!record) throw new AppError("not_found", `no policy named "${name}"`);
    return record;
  }

  return {
    snapshot,

    async list() {
      return (await store.policies.list()).map(view);
    },

    async get(name) {
      return view(await mustGet(name));
    },

    async put(document, by) {
      const doc = validate(document);
      const existing = await store.policies.findByName(doc.metadata.name);
      const text = canonicalJson(doc);
      if (existing?.document === text) return { view: view(existing), created: false, changed: false };
      const others = (await store.policies.list())
        .filter((r) => r.name !== doc.metadata.name)
        .map((r) => JSON.parse(r.document) as PolicyDocument);
      checkSet([...others, doc]);
      await deps.checkBundles?.(existing ? [...others, JSON.parse(existing.document) as PolicyDocument] : others, [
        ...others,
        doc,
      ]);
      await store.policies.change({ upsert: [{ name: doc.metadata.name, document: text }], remove: [] }, by, () =>
        randomId(),
      );
      await bus.publish("bundle.changed", { agentIds: "*" });
      return { view: view(await mustGet(doc.metadata.name)), created: !existing, changed: true };
    },

    async remove(name, by) {
      await mustGet(name);
      await store.policies.change({ upsert: [], remove: [name] }, by, () => randomId());
      await bus.publish("bundle.changed", { agentIds: "*" });
    },

    async apply(documents, options, by) {
      const docs = documents.map((d, i) => validate(d, `${i}.`));
      const names = new Set<string>();
      docs.forEach((d, i) => {
        if (names.has(d.metadata.name)) {
          throw new AppError("validation_failed", "the policy set is invalid: see errors", {
            fields: [{ field: `${i}.metadata.name`, message: `"${d.metadata.name}" appears twice` }],
          });
        }
        names.add(d.metadata.name);
      });
      const stored = await store.policies.list();
      const byName = new Map(stored.map((r) => [r.name, r]));
      const result: ApplyResult = {
        dryRun: options.dryRun,
        revision: (await store.counters.get("policy.revision")).toString(),
        created: [],
        updated: [],
        unchanged: [],
        deleted: [],
      };
      const upsert: { name: string; document: string }[] = [];
      for (const d of docs) {
        const text = canonicalJson(d);
        const existing = byName.get(d.metadata.name);
        if (!existing) result.created.push(d.metadata.name);
        else if (existing.document !== text) result.updated.push(d.metadata.name);
        else {
          result.unchanged.push(d.metadata.name);
          continue;
        }
        upsert.push({ name: d.metadata.name, document: text });
      }
      if (options.prune) result.deleted = stored.filter((r) => !names.has(r.name)).map((r) => r.name);
      const kept = stored
        .filter((r) => !names.has(r.name) && !result.deleted.includes(r.name))
        .map((r) => JSON.parse(r.document) as PolicyDocument);
      checkSet([...kept, ...docs]);
      if (upsert.length > 0)
        await deps.checkBundles?.(
          stored.map((r) => JSON.parse(r.document) as PolicyDocument),
          [...kept, ...docs],
        );
      if (options.dryRun || (upsert.length === 0 && result.deleted.length === 0)) return result;
      result.revision = (
        await store.policies.change({ upsert, remove: result.deleted }, by, () => randomId())
      ).toString();
      await bus.publish("bundle.changed", { agentIds: "*" });
      return result;
    },

    async simulate(request) {
      const { revision, compiled } = await snapshot();
      const verdict = evaluate(compiled, request, { explain: true });
      return {
        effect: verdict.effect,
        rule: verdict.rule,
        message: verdict.message,
        obligations: verdict.obligations,
        matched: verdict.matched,
        revision: revision.toString(),
      };
    },
  };
}
