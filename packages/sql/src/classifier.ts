/**
 * The classifier the Postgres proxy calls for every query text: parse (libpg-query), classify each
 * statement, apply the rules that span statements and lexical state, and cache the result behind
 * the conservative normalizer. Pure apart from the parser it calls.
 *
 * Cache discipline: a cached entry holds frozen statement shapes and each statement's extent in
 * KEY coordinates (every literal counts as one character), so a hit re-slices `text` from the
 * current input, whose literals may be longer or shorter. Results that depend on literal values
 * (SET, EXPLAIN option values) are cached under the exact text only. Errors are not cached.
 */
import { classifyStatement, dynamicShape, type StatementShape } from "./classify-statement.js";
import { LruCache } from "./lru.js";
import { canonicalText, keyOffsetToText, normalizeForCache, textOffsetToKey } from "./normalize.js";
import { fingerprintText, parseText, sqlParserReady } from "./parser.js";
import type {
  Classification,
  Classifier,
  ClassifierOptions,
  LexicalState,
  SqlSyntaxError,
  StatementInfo,
} from "./types.js";

export const DEFAULT_CACHE_ENTRIES = 10_000;
export const DEFAULT_MAX_CACHED_TEXT_LENGTH = 16 * 1024;
export const DEFAULT_MAX_CACHE_CHARS = 8 * 1024 * 1024;

export const REASON_LEXICAL_CHANGE =
  "a statement that changes standard_conforming_strings or client_encoding must be sent on its own";
export const REASON_BACKSLASH =
  "standard_conforming_strings is off and the text contains a backslash: the server may read its quotes differently from the classifier";

interface Entry {
  shapes: readonly StatementShape[];
  /** Each statement's [start, end) in the coordinates of the key it is stored under. */
  offsets: readonly number[];
  fingerprint: string;
}

interface Fresh {
  entry: Entry;
  literalSensitive: boolean;
}

const NO_SPANS: readonly number[] = [];

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}

function syntaxError(message: string, position = 0): { ok: false; error: SqlSyntaxError } {
  return { ok: false, error: { message, position, sqlstate: "42601" } };
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * Classifies `text` from scratch (no cache). Offsets are in text coordinates. The fingerprint is
 * taken from `shapeText` (the canonical text of its cache key), so that every text sharing a key
 * gets the same one, cached or not.
 */
function classifyFresh(
  text: string,
  standardConformingStrings: boolean,
  shapeText: string,
): Fresh | { ok: false; error: SqlSyntaxError } {
  try {
    return classifyParsed(text, standardConformingStrings, shapeText);
  } catch (error) {
    // The walks over the parse tree recurse: a tree nested deeper than the stack allows (a thousand
    // nested subqueries) is refused like PostgreSQL refuses what is too deep for its own stack.
    if (!(error instanceof RangeError)) throw error;
    return {
      ok: false,
      error: { message: "statement is too deeply nested for Moat to check", position: 0, sqlstate: "54001" },
    };
  }
}

function classifyParsed(
  text: string,
  standardConformingStrings: boolean,
  shapeText: string,
): Fresh | { ok: false; error: SqlSyntaxError } {
  // PostgreSQL reads query strings up to a NUL byte; the parser would too, and ignore the rest.
  const nul = text.indexOf("\u0000");
  if (nul >= 0) return syntaxError("query text contains a NUL character", nul + 1);
  if (LONE_SURROGATE.test(text)) return syntaxError("query text is not valid Unicode");
  const unsafeBackslash = !standardConformingStrings && text.includes("\\");
  const parsed = parseText(text);
  let shapes: StatementShape[];
  let offsets: number[];
  let literalSensitive = false;
  if (!parsed.ok) {
    if (!unsafeBackslash) return parsed;
    // The server may parse what our (standard-conforming) parser cannot: refuse, don't report an error.
    let start = 0;
    let end = text.length;
    while (start < end && /\s/.test(text.charAt(start))) start++;
    while (end > start && /\s/.test(text.charAt(end - 1))) end--;
    shapes = [dynamicShape("", REASON_BACKSLASH)];
    offsets = [start, end];
  } else {
    shapes = [];
    offsets = [];
    let lexicalChangeSeen = false;
    for (const raw of parsed.statements) {
      const { shape, literalSensitive: sensitive } = classifyStatement(raw.stmt);
      literalSensitive ||= sensitive;
      if (unsafeBackslash) shapes.push(dynamicShape(shape.kind, REASON_BACKSLASH));
      else if (lexicalChangeSeen) shapes.push(dynamicShape(shape.kind, REASON_LEXICAL_CHANGE));
      else shapes.push(shape);
      if (shape.lexicalChange) lexicalChangeSeen = true;
      offsets.push(raw.start, raw.end);
    }
  }
  deepFreeze(shapes);
  return { entry: { shapes, offsets, fingerprint: fingerprintText(shapeText) }, literalSensitive };
}

/** The statement with its text (field by field: much cheaper than spreading a frozen object). */
function withText(shape: StatementShape, text: string): StatementInfo {
  const info: StatementInfo = {
    kind: shape.kind,
    text,
    statementClass: shape.statementClass,
    actions: shape.actions,
    tables: shape.tables,
    functions: shape.functions,
  };
  if (shape.reason !== undefined) info.reason = shape.reason;
  if (shape.searchPath !== undefined) info.searchPath = shape.searchPath;
  if (shape.searchPathLocal !== undefined) info.searchPathLocal = shape.searchPathLocal;
  if (shape.lexicalChange !== undefined) info.lexicalChange = shape.lexicalChange;
  if (shape.lexicalSetting !== undefined) info.lexicalSetting = shape.lexicalSetting;
  if (shape.prepare !== undefined) info.prepare = shape.prepare;
  if (shape.execute !== undefined) info.execute = shape.execute;
  if (shape.deallocate !== undefined) info.deallocate = shape.deallocate;
  if (shape.result !== undefined) info.result = shape.result;
  if (shape.reads !== undefined) info.reads = shape.reads;
  if (shape.cursor !== undefined) info.cursor = shape.cursor;
  if (shape.savepoint !== undefined) info.savepoint = shape.savepoint;
  if (shape.endsTransaction === true) info.endsTransaction = true;
  if (shape.fieldNames !== undefined) info.fieldNames = shape.fieldNames;
  if (shape.operators !== undefined) info.operators = shape.operators;
  if (shape.typeNames !== undefined) info.typeNames = shape.typeNames;
  return info;
}

/** A Classification for `text` from an entry whose offsets are in key coordinates of `spans`. */
function instantiate(entry: Entry, text: string, spans: readonly number[], cached: boolean): Classification {
  const { shapes, offsets } = entry;
  const statements: StatementInfo[] = new Array<StatementInfo>(shapes.length);
  for (let i = 0; i < shapes.length; i++) {
    let start = offsets[2 * i] as number;
    let end = offsets[2 * i + 1] as number;
    if (spans.length > 0) {
      start = keyOffsetToText(start, spans);
      end = keyOffsetToText(end, spans);
    }
    statements[i] = withText(shapes[i] as StatementShape, text.slice(start, end));
  }
  return { ok: true, statements, fingerprint: entry.fingerprint, cached };
}

/**
 * Classifies `text` without a cache: what a classifier does for a text too long to cache, and what
 * a classifier worker (classify-worker.ts) runs for the proxy. Throws unless {@link loadSqlParser}
 * has been awaited.
 */
export function classifyText(text: string, lexical: LexicalState): Classification {
  if (!sqlParserReady()) throw new Error("@moat/sql: await loadSqlParser() before classifyText()");
  return classifyUncached(text, lexical.standardConformingStrings === true);
}

function classifyUncached(text: string, scs: boolean): Classification {
  const normalized = normalizeForCache(text);
  const fresh = classifyFresh(text, scs, normalized ? canonicalText(normalized.key) : text);
  if (!("entry" in fresh)) return fresh;
  return instantiate(fresh.entry, text, NO_SPANS, false);
}

/**
 * Creates a classifier with its own cache. Throws unless {@link loadSqlParser} has been awaited.
 * One classifier can serve every session of a process: the cache key includes the lexical state.
 */
export function createClassifier(options: ClassifierOptions = {}): Classifier {
  if (!sqlParserReady()) throw new Error("@moat/sql: await loadSqlParser() before createClassifier()");
  const cacheEntries = options.cacheEntries ?? DEFAULT_CACHE_ENTRIES;
  const maxCachedTextLength = options.maxCachedTextLength ?? DEFAULT_MAX_CACHED_TEXT_LENGTH;
  const maxCacheChars = options.maxCacheChars ?? DEFAULT_MAX_CACHE_CHARS;
  const cache = cacheEntries > 0 ? new LruCache<Entry>(cacheEntries, maxCacheChars) : undefined;

  return {
    get cacheSize() {
      return cache?.size ?? 0;
    },
    classify(text: string, lexical: LexicalState): Classification {
      const scs = lexical.standardConformingStrings === true;
      if (cache === undefined || text.length > maxCachedTextLength) return classifyUncached(text, scs);
      const prefix = scs ? "1" : "0";
      const normalized = normalizeForCache(text);
      const spans = normalized?.spans ?? NO_SPANS;
      // "N": normalized (or literal-free) text; "X": exact text. The prefixes keep them apart.
      const key = normalized ? `${prefix}N${normalized.key}` : `${prefix}X${text}`;
      const exactKey = spans.length > 0 ? `${prefix}X${text}` : undefined;
      let entry = cache.get(key);
      if (entry !== undefined) return instantiate(entry, text, spans, true);
      if (exactKey !== undefined) {
        entry = cache.get(exactKey);
        if (entry !== undefined) return instantiate(entry, text, NO_SPANS, true);
      }
      const fresh = classifyFresh(text, scs, normalized ? canonicalText(normalized.key) : text);
      if (!("entry" in fresh)) return fresh;
      if (exactKey !== undefined && fresh.literalSensitive) {
        cache.set(exactKey, fresh.entry, exactKey.length);
      } else {
        const offsets =
          spans.length > 0 ? fresh.entry.offsets.map((o) => textOffsetToKey(o, spans)) : fresh.entry.offsets;
        cache.set(key, { ...fresh.entry, offsets }, key.length);
      }
      return instantiate(fresh.entry, text, NO_SPANS, false);
    },
  };
}
