/**
 * The one impure edge of @moat/sql: loading libpg-query (PostgreSQL's own parser compiled to WASM)
 * and calling it. Converts its UTF-8 byte offsets to string offsets and its errors to
 * PostgreSQL-like ones (1-based character positions).
 */
import "./wasm-tiering.js"; // before libpg-query: see the file
import type * as LibPgQuery from "libpg-query";
import type { SqlSyntaxError } from "./types.js";

let loading: Promise<void> | undefined;
let lib: typeof LibPgQuery | undefined;

/** The loaded parser; throws (a parse error, denied) before loadSqlParser has finished. */
function parser(): typeof LibPgQuery {
  if (!lib) throw new Error("the SQL parser is not loaded yet");
  return lib;
}

/**
 * Loads the parser (once; later calls return the same promise). Await it before classifying.
 * libpg-query is imported here, not at the top: its module must be evaluated after
 * wasm-tiering.js has set V8's flag, in a bundle too (where static imports of external packages
 * are hoisted above the bundle's own code).
 */
export function loadSqlParser(): Promise<void> {
  loading ??= import("libpg-query")
    .then(async (module) => {
      await module.loadModule();
      lib = module;
    })
    .catch((error: unknown) => {
      loading = undefined;
      throw error;
    });
  return loading;
}

export function sqlParserReady(): boolean {
  return lib !== undefined;
}

/** One statement of a parsed text: its node and its trimmed extent as string offsets. */
export interface RawStatement {
  stmt: unknown;
  start: number;
  end: number;
}

export type ParseOutcome = { ok: true; statements: RawStatement[] } | { ok: false; error: SqlSyntaxError };

interface LibpgStatement {
  stmt?: unknown;
  stmt_location?: number;
  stmt_len?: number;
}

const isSpace = (code: number) => code === 32 || (code >= 9 && code <= 13);

/** UTF-8 length of the code unit(s) at `i` of `text` (assumes no lone surrogates). */
function utf8Length(code: number): number {
  return code < 0x80 ? 1 : code < 0x800 ? 2 : code >= 0xd800 && code <= 0xdbff ? 4 : 3;
}

/**
 * Converts increasing UTF-8 byte offsets of `text` to string offsets, in one forward pass.
 * Returns a function to be called with non-decreasing offsets.
 */
function byteToCharCursor(text: string, ascii: boolean): (byteOffset: number) => number {
  if (ascii) return (byteOffset) => Math.min(byteOffset, text.length);
  let char = 0;
  let byte = 0;
  return (byteOffset) => {
    while (byte < byteOffset && char < text.length) {
      const code = text.charCodeAt(char);
      byte += utf8Length(code);
      char += code >= 0xd800 && code <= 0xdbff ? 2 : 1;
    }
    return char;
  };
}

// eslint-disable-next-line no-control-regex
const NON_ASCII = /[^\u0000-\u007f]/;

/** Parses `text` into statements (PostgreSQL's grammar, standard_conforming_strings on). */
export function parseText(text: string): ParseOutcome {
  const ascii = !NON_ASCII.test(text);
  if (text.length === 0) return { ok: true, statements: [] };
  let result: { stmts?: LibpgStatement[] };
  try {
    result = parser().parseSync(text) as { stmts?: LibpgStatement[] };
  } catch (error) {
    const details = (error as { sqlDetails?: { cursorPosition?: number; message?: string } }).sqlDetails;
    const message = details?.message ?? (error instanceof Error ? error.message : String(error));
    // libpg-query reports PostgreSQL's cursor position (characters, 1-based) minus one.
    const cursor = details?.cursorPosition;
    const position = typeof cursor === "number" && cursor >= 0 ? cursor + 1 : 0;
    return { ok: false, error: { message, position, sqlstate: "42601" } };
  }
  const toChar = byteToCharCursor(text, ascii);
  const statements: RawStatement[] = [];
  for (const raw of result.stmts ?? []) {
    const location = raw.stmt_location ?? 0;
    let start = toChar(location);
    // stmt_len 0 (absent) means "to the end of the text".
    let end = raw.stmt_len ? toChar(location + raw.stmt_len) : text.length;
    while (start < end && isSpace(text.charCodeAt(start))) start++;
    while (end > start && isSpace(text.charCodeAt(end - 1))) end--;
    statements.push({ stmt: raw.stmt, start, end });
  }
  return { ok: true, statements };
}

/** libpg-query's fingerprint of the text's statement shapes; a plain hash if it cannot. */
export function fingerprintText(text: string): string {
  if (text.trim() !== "") {
    try {
      return parser().fingerprintSync(text);
    } catch {
      // fall through
    }
  }
  return fnv1a64(text);
}

/** FNV-1a, 64-bit, as 16 hex digits. */
export function fnv1a64(text: string): string {
  let hash = 0xcbf29ce484222325n;
  for (let i = 0; i < text.length; i++) {
    hash ^= BigInt(text.charCodeAt(i));
    hash = (hash * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return hash.toString(16).padStart(16, "0");
}
