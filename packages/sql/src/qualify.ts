/**
 * Turns the tables a statement names into `schema.table` strings for policy matching. Pure: the
 * caller passes the session's search_path (tracked from SET search_path) and user.
 *
 * Catalog reads are not data: tables of pg_catalog and information_schema are dropped. An
 * unqualified name is reported once per schema of the search path it could resolve to, so the
 * policy must allow it in all of them (conservative: the classifier cannot know which schema has
 * the table). PostgreSQL searches pg_catalog first unless the path lists it explicitly, so
 * unqualified names of real pg_catalog relations resolve there (and are dropped) unless another
 * schema precedes pg_catalog in the path.
 */
import { PG_CATALOG_RELATIONS } from "./gen/pg-catalog.js";
import type { TableRef } from "./types.js";

const CATALOG_SCHEMAS: ReadonlySet<string> = new Set(["pg_catalog", "information_schema"]);

/** A relation of pg_catalog or information_schema (unqualified: a name pg_catalog has, found there first). */
export function isCatalogRelation(table: TableRef): boolean {
  return table.schema === undefined ? PG_CATALOG_RELATIONS.has(table.name) : CATALOG_SCHEMAS.has(table.schema);
}

export interface QualifyContext {
  /** The session's search_path, as SET (may contain "$user"). */
  searchPath: readonly string[];
  /** The session user, replacing "$user" in the path. */
  user: string;
}

/**
 * `schema.table` for every table, deduplicated, catalog tables dropped. An unqualified name with
 * an empty search path (or one of catalog schemas only) yields nothing: PostgreSQL could only find
 * it among the session's own temporary tables.
 */
export function qualifyTables(tables: readonly TableRef[], ctx: QualifyContext): string[] {
  const path = ctx.searchPath.map((schema) => (schema === "$user" ? ctx.user : schema));
  const catalogAt = path.indexOf("pg_catalog");
  const result = new Set<string>();
  for (const table of tables) {
    if (table.schema !== undefined) {
      if (!CATALOG_SCHEMAS.has(table.schema)) result.add(`${table.schema}.${table.name}`);
      continue;
    }
    // Schemas searched before the name is found in pg_catalog (all of them when it is not there).
    const candidates = PG_CATALOG_RELATIONS.has(table.name) ? (catalogAt < 0 ? [] : path.slice(0, catalogAt)) : path;
    for (const schema of candidates) if (!CATALOG_SCHEMAS.has(schema)) result.add(`${schema}.${table.name}`);
  }
  return [...result];
}

/**
 * Whether a search path lets another schema's functions and operators take the place of built-ins:
 * PostgreSQL searches pg_catalog first unless the path names it, and then in the path's order, so
 * `public, pg_catalog` finds a `public.lower(text)` before pg_catalog's (pg_temp is never searched
 * for functions and operators).
 */
export function pathShadowsCatalog(path: readonly string[]): boolean {
  const at = path.indexOf("pg_catalog");
  for (let i = 0; i < at; i++) if (!/^pg_temp(_\d+)?$/.test(path[i] as string)) return true;
  return false;
}
