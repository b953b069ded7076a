/**
 * Pure helpers over policy documents for display: putting keys in the order the format declares them
 * (the control plane stores canonical JSON with sorted keys, which reads badly), and a field-level
 * diff between two documents for `moat policy apply --dry-run`. No I/O; nothing here talks to the API.
 */
import { PolicySchema } from "@moat/policy";
import { clean } from "./output.js";

/** The parts of a JSON schema (TypeBox's output) that say in which order an object's keys come. */
interface SchemaNode {
  type?: string;
  properties?: Record<string, SchemaNode>;
  items?: SchemaNode;
}

const policySchema = PolicySchema as unknown as SchemaNode;

type JsonObject = Record<string, unknown>;

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Keys in the schema's declaration order, then keys the schema does not name, sorted. */
function orderedKeys(keys: Iterable<string>, schema: SchemaNode | undefined): string[] {
  const present = new Set(keys);
  const declared = Object.keys(schema?.properties ?? {}).filter((k) => present.has(k));
  const others = [...present].filter((k) => !declared.includes(k)).sort();
  return [...declared, ...others];
}

function childSchema(schema: SchemaNode | undefined, key: string | number): SchemaNode | undefined {
  if (typeof key === "number") return schema?.type === "array" ? schema.items : undefined;
  return schema?.properties?.[key];
}

function reorder(value: unknown, schema: SchemaNode | undefined): unknown {
  if (Array.isArray(value)) return value.map((item) => reorder(item, childSchema(schema, 0)));
  if (!isObject(value)) return value;
  return Object.fromEntries(
    orderedKeys(Object.keys(value), schema).map((k) => [k, reorder(value[k], childSchema(schema, k))]),
  );
}

/**
 * The document with its keys in the order of the policy format (apiVersion, kind, metadata, spec;
 * subjects, resources, rules...), so `moat policy get` prints what a person would have written.
 */
export function orderPolicyDocument<T>(document: T): T {
  return reorder(document, policySchema) as T;
}

const MAX_VALUE_CHARS = 60;

// Strings shown without quotes: words that cannot be mistaken for a number, boolean or null.
const plainString = /^[\w.:@*/+-]+$/;
const looksLikeJson = /^(true|false|null|[-+]?\d[\d.eE+-]*)$/;

/** A value on one line: plain words as is, anything else as JSON, long values cut, terminal-safe. */
export function formatValue(value: unknown): string {
  const plain = typeof value === "string" && plainString.test(value) && !looksLikeJson.test(value);
  const text = plain ? value : (JSON.stringify(value) ?? String(value));
  return clean(text.length > MAX_VALUE_CHARS ? `${text.slice(0, MAX_VALUE_CHARS - 3)}...` : text);
}

function isScalar(value: unknown): boolean {
  return value === null || typeof value !== "object";
}

/**
 * What changed from `before` to `after`, one line per leaf, in document order:
 * `path: old -> new` for a changed value, `+ path` for an added field or list item, `- path` for a
 * removed one (scalars added or removed also show their value). Lists are compared by position, so
 * inserting a rule in the middle shows the rules after it as changed: simple and predictable.
 */
export function diffDocuments(before: unknown, after: unknown): string[] {
  const lines: string[] = [];
  const join = (path: string, key: string | number) => (path === "" ? String(key) : `${path}.${key}`);
  const added = (path: string, value: unknown) =>
    lines.push(isScalar(value) ? `+ ${path}: ${formatValue(value)}` : `+ ${path}`);
  const removed = (path: string, value: unknown) =>
    lines.push(isScalar(value) ? `- ${path}: ${formatValue(value)}` : `- ${path}`);

  const walk = (a: unknown, b: unknown, path: string, schema: SchemaNode | undefined): void => {
    if (Array.isArray(a) && Array.isArray(b)) {
      for (let i = 0; i < Math.max(a.length, b.length); i++) {
        const p = join(path, i);
        if (i >= b.length) removed(p, a[i]);
        else if (i >= a.length) added(p, b[i]);
        else walk(a[i], b[i], p, childSchema(schema, i));
      }
      return;
    }
    if (isObject(a) && isObject(b)) {
      for (const key of orderedKeys([...Object.keys(a), ...Object.keys(b)], schema)) {
        const p = join(path, key);
        if (!(key in b)) removed(p, a[key]);
        else if (!(key in a)) added(p, b[key]);
        else walk(a[key], b[key], p, childSchema(schema, key));
      }
      return;
    }
    if (JSON.stringify(a) !== JSON.stringify(b))
      lines.push(`${path || "(document)"}: ${formatValue(a)} -> ${formatValue(b)}`);
  };
  walk(before, after, "", policySchema);
  return lines;
}
