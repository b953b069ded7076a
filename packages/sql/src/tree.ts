/**
 * Reading libpg-query's JSON parse trees: nodes are written wrapped (`{ "RangeVar": {...} }`) where a
 * field holds any Node, unwrapped where it holds one specific type. Shared by the classifier and
 * the result lineage.
 */

export type Obj = Record<string, unknown>;

export const isObj = (value: unknown): value is Obj =>
  value !== null && typeof value === "object" && !Array.isArray(value);

/** `{ "Kind": {...} }` -> ["Kind", {...}]; anything else -> undefined. */
export function unwrap(value: unknown): [string, Obj] | undefined {
  if (!isObj(value)) return undefined;
  const keys = Object.keys(value);
  if (keys.length !== 1) return undefined;
  const kind = keys[0] as string;
  const code = kind.charCodeAt(0);
  if (code < 65 || code > 90) return undefined;
  const node = value[kind];
  return isObj(node) ? [kind, node] : undefined;
}

/** The strings of a name list (`[{String:{sval}}...]`); "?" for an item that is not a String. */
export function nameParts(list: unknown): string[] {
  if (!Array.isArray(list)) return [];
  return list.map((item) => {
    const node = unwrap(item);
    return node && node[0] === "String" ? String(node[1].sval ?? "") : "?";
  });
}

/** The alias name of a FROM item (`FROM users u`: "u"), if it has one. */
export function aliasOf(node: Obj): string | undefined {
  return isObj(node.alias) && typeof node.alias.aliasname === "string" ? node.alias.aliasname : undefined;
}

/**
 * Visits every wrapped node under `value`, at any depth (through the fields of unwrapped objects
 * too), a node before its children; `visit` returning false skips that node's children. Iterative,
 * so a deeply nested tree cannot overflow the stack here.
 */
export function walkNodes(value: unknown, visit: (kind: string, node: Obj) => boolean | void): void {
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const item = stack.pop();
    if (Array.isArray(item)) {
      for (let i = item.length - 1; i >= 0; i--) stack.push(item[i]);
      continue;
    }
    if (!isObj(item)) continue;
    const wrapped = unwrap(item);
    if (!wrapped) stack.push(...Object.values(item));
    else if (visit(wrapped[0], wrapped[1]) !== false) stack.push(...Object.values(wrapped[1]));
  }
}
