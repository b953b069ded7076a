/**
 * Test helpers for @moat/sql (not exported by the package): short summaries of classifications
 * that corpus tables can compare against.
 */
import type { Classification, LexicalState, StatementInfo, TableRef } from "./types.js";

export const ON: LexicalState = { standardConformingStrings: true };
export const OFF: LexicalState = { standardConformingStrings: false };

export const tableName = (table: TableRef): string =>
  [table.catalog, table.schema, table.name].filter((part) => part !== undefined).join(".");

/** `{ class, "db:read": ["t"], ... }`: one statement's class and the tables of each action. */
export function summarize(info: StatementInfo): Record<string, string | string[]> {
  const summary: Record<string, string | string[]> = { class: info.statementClass };
  for (const use of info.actions) summary[use.action] = [...use.tables.map(tableName), ...(use.functions ?? [])];
  return summary;
}

export function statementsOf(result: Classification): StatementInfo[] {
  if (!result.ok) throw new Error(`unexpected syntax error: ${result.error.message}`);
  return result.statements;
}

/** A classification with everything but the cache flag, for comparing cached and uncached runs. */
export function comparable(result: Classification): unknown {
  if (!result.ok) return result;
  return { statements: result.statements, fingerprint: result.fingerprint };
}
