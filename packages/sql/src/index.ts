/**
 * @moat/sql: the SQL statement classifier of the Moat agent's Postgres proxy. It parses query text
 * with PostgreSQL's own parser (libpg-query) and says, per statement, which permissions it needs
 * (db:read, db:write, ...) on which tables, so the proxy can decide it against policy. Pure apart
 * from loading the parser once: text in, classification out; the proxy owns sessions and sockets.
 *
 * Usage: `await loadSqlParser()` once, then `createClassifier().classify(text, lexicalState)`.
 */
export * from "./types.js";
export { loadSqlParser } from "./parser.js";
export {
  classifyText,
  createClassifier,
  DEFAULT_CACHE_ENTRIES,
  DEFAULT_MAX_CACHED_TEXT_LENGTH,
  DEFAULT_MAX_CACHE_CHARS,
  REASON_BACKSLASH,
  REASON_LEXICAL_CHANGE,
} from "./classifier.js";
export { createClassifierPool, POOL_BUSY, type ClassifierPool, type ClassifierPoolOptions } from "./classifier-pool.js";
export { ANY_COLUMN, columnSources, mergeLineage, mergeSources, UNKNOWN_LINEAGE } from "./lineage.js";
export { pathShadowsCatalog, qualifyTables, type QualifyContext } from "./qualify.js";
export { functionVerdict, isBuiltinFunction, isBuiltinOperator, type FunctionVerdict } from "./functions.js";
export { PG_CATALOG_VERSION } from "./gen/pg-catalog.js";
export {
  auditParameters,
  setsConfig,
  takesSecrets,
  auditRedaction,
  redactFor,
  redactLiterals,
  redactMessage,
  SECRET_WORDS,
  unparsedAuditText,
  type AuditRedaction,
} from "./redact.js";
