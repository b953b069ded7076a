/**
 * Keeping secrets out of the audit trail: statements that set a password or a connection string
 * (`ALTER ROLE ... PASSWORD '...'`, user mappings, foreign servers and wrappers, subscriptions,
 * `ALTER SYSTEM`, dblink connections, `COPY ... PROGRAM`, settings named like secrets) are recorded
 * with their string literals replaced; DO blocks and function bodies that set one keep their code
 * without the literals in it; the messages recorded with them lose what they quote. Pure.
 */

/** Statement kinds whose string literals may hold passwords or connection strings. */
const SECRET_KINDS: ReadonlySet<string> = new Set([
  "CreateRoleStmt",
  "AlterRoleStmt",
  "CreateUserMappingStmt",
  "AlterUserMappingStmt",
  "CreateForeignServerStmt",
  "AlterForeignServerStmt",
  "CreateFdwStmt",
  "AlterFdwStmt",
  "CreateForeignTableStmt",
  "ImportForeignSchemaStmt",
  "CreateSubscriptionStmt",
  "AlterSubscriptionStmt",
]);

/** Statements that set a configuration value: secret when the text names one (SECRET_WORDS). */
const SETTING_KINDS: ReadonlySet<string> = new Set([
  "VariableSetStmt",
  "AlterSystemStmt",
  "AlterRoleSetStmt",
  "AlterDatabaseSetStmt",
  "AlterFunctionStmt",
]);

/** Statement kinds that carry code (a DO block, a function's or procedure's body). */
const CODE_KINDS: ReadonlySet<string> = new Set(["DoStmt", "CreateFunctionStmt"]);

/**
 * Words that, in code or a setting, suggest a password or a connection string (`EXECUTE
 * format('ALTER ROLE %I PASSWORD %L', ...)`, `dblink_connect(...)`, a user mapping, a
 * subscription's connection, `SET app.db_password = ...`). Matching more than needed only redacts
 * more.
 */
export const SECRET_WORDS =
  /passw|passphrase|pwd|conninfo|connection|dblink|mapping|subscription|server|secret|token|credential|key|jwt/i;

const DBLINK = /(^|\.)dblink/;
const SET_CONFIG = /(^|\.)set_config$/;

/**
 * Whether a statement sets configuration values from what it is given: a set_config call, or an
 * UPDATE of the pg_settings view (its rule calls set_config; review 49).
 */
export function setsConfig(info: { kind: string; functions: readonly string[] }, text: string): boolean {
  // (By its text: a SQL PREPARE of the UPDATE, which EXECUTE runs, is a PrepareStmt; review 52.)
  return info.functions.some((f) => SET_CONFIG.test(f)) || (/pg_settings/i.test(text) && /\bupdate\b/i.test(text));
}

/**
 * How a statement's text is kept in the audit trail:
 * - `literals`: every string literal replaced by '***' (passwords, connection strings);
 * - `code`: a DO block's or function's body kept, every other literal and every literal inside the
 *   body replaced (code in plpgsql or sql that names a secret);
 * - `value`: a setting's value replaced, whatever its spelling (`SET app.password = hunter2`:
 *   PostgreSQL takes a bare word or a number there too), and every string literal;
 * - `none`: as written.
 */
export type AuditRedaction = "none" | "literals" | "code" | "value";

export function auditRedaction(info: { kind: string; functions: readonly string[] }, text: string): AuditRedaction {
  const { kind, functions } = info;
  if (SECRET_KINDS.has(kind)) return "literals";
  for (const f of functions) if (DBLINK.test(f)) return "literals";
  if (setsConfig(info, text) && SECRET_WORDS.test(text)) return "literals";
  // ALTER [FOREIGN] TABLE ... [ALTER COLUMN c] OPTIONS (...): a foreign table's options may hold
  // credentials, as CREATE FOREIGN TABLE's do (however spelled: review 51).
  if (kind === "AlterTableStmt" && /options/i.test(text)) return "literals";
  if (kind === "CopyStmt") return /program/i.test(text) ? "literals" : "none";
  if (kind === "AlterSystemStmt") return "value";
  if (SETTING_KINDS.has(kind)) return SECRET_WORDS.test(text) ? "value" : "none";
  if (CODE_KINDS.has(kind) && SECRET_WORDS.test(text)) return readableCode(kind, text) ? "code" : "literals";
  return "none";
}

/** A statement's text as the audit trail keeps it, redacted as auditRedaction said. */
export function redactFor(text: string, redaction: AuditRedaction): string {
  if (redaction === "none") return text;
  if (redaction === "value") return redactSettingValue(text);
  return redactLiterals(text, redaction === "code");
}

/**
 * A statement's bound parameters (rendered) as the audit trail keeps them: `***` when its text may
 * hold a secret, or when it sets configuration values (set_config, an UPDATE of pg_settings): its
 * parameters may name a secret setting and give its value (`SELECT set_config($1, $2, false)` with
 * `app.password`, review 19), in any encoding or format (sent in binary, a value of no declared type
 * is rendered in hex: review 49), so they are never kept.
 */
export function auditParameters(
  info: { kind: string; functions: readonly string[]; text: string },
  redaction: AuditRedaction,
  params: string,
): string {
  return redaction !== "none" || setsConfig(info, info.text) ? "***" : params;
}

/**
 * Whether what a statement is given (bound parameters, EXECUTE's arguments) may carry a secret: the
 * trail keeps it redacted, or it sets configuration values from them.
 */
export function takesSecrets(info: { kind: string; functions: readonly string[]; text: string }): boolean {
  return setsConfig(info, info.text) || auditRedaction(info, info.text) !== "none";
}

/**
 * A statement the parser could not read, as the audit trail keeps it: unread, it may be anything, so
 * its literals go, and one that names a secret (`ALTER ROLE app PASSWORD hunter2`, unquoted or "in
 * quotes") is kept up to that word.
 */
export function unparsedAuditText(text: string): string {
  const kept = redactLiterals(text);
  const secret = SECRET_WORDS.exec(kept);
  if (!secret) return kept;
  let end = secret.index + secret[0].length;
  while (end < kept.length && /[\w$]/.test(kept[end] as string)) end++;
  return end < kept.length ? `${kept.slice(0, end)} …` : kept;
}

/** `... SET name = value` / `TO value` cut after the `=` or `TO` (review 19); literals otherwise. */
function redactSettingValue(text: string): string {
  const m = /\bset\s+(?:(?:local|session)\s+)?(?:"[^"]*"|[\w$.])+\s*(?:=|\bto\b)/i.exec(text);
  return m ? `${redactLiterals(text.slice(0, m.index + m[0].length))} ***` : redactLiterals(text);
}

/**
 * A server's or parser's message about a statement that may hold a secret, without what it quotes
 * (`syntax error at or near "hunter2"` -> `syntax error at or near "***"`): messages quote the
 * offending token or value. Everything from the first quote to the last goes.
 */
export function redactMessage(message: string): string {
  // From the first quote to the last: a quoted token may hold quotes itself (`near ""hunter2""`).
  return message.replace(/"[\s\S]*"|"[\s\S]*$/, '"***"').replace(/'[\s\S]*'|'[\s\S]*$/, "'***'");
}

/**
 * Whether a code body is one this scan can read (plpgsql or sql: the SQL lexer's quoting): every
 * LANGUAGE the text names is one of them (a DO block without one is plpgsql). A body in another
 * language (Python, JavaScript, C) is replaced whole.
 */
function readableCode(kind: string, text: string): boolean {
  // The word spelled in a way the match below does not read (`LANGUAGE/**/plpython3u`, a
  // dollar-quoted name): not readable (review 19).
  const words = text.match(/language/gi)?.length ?? 0;
  let matched = 0;
  for (const m of text.matchAll(/\blanguage\s+(?:"([^"]*)"|'([^']*)'|([A-Za-z_\u0080-\uffff][\w$\u0080-\uffff]*))/gi)) {
    matched++;
    const lang = (m[1] ?? m[2] ?? m[3] ?? "").toLowerCase();
    if (lang !== "plpgsql" && lang !== "sql") return false;
  }
  if (matched !== words) return false;
  return matched > 0 || kind === "DoStmt";
}

const REDACTED = "'***'";
const IDENT_START = /[A-Za-z_\u0080-\uffff]/;
const IDENT_CHAR = /[A-Za-z0-9_$\u0080-\uffff]/;
const DIGIT = /[0-9]/;
/** A dollar quote's opening tag at a position (sticky; PostgreSQL puts no limit on a tag's length). */
const DOLLAR_TAG = /\$([A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/y;

/**
 * `text` with every string literal ('...', E'...', $tag$...$tag$) replaced by '***'. It reads
 * tokens as PostgreSQL's lexer does: comments (`--` to a newline or carriage return, nested block comments)
 * and quoted identifiers are skipped over; an identifier or a number is read whole (a `$` inside an
 * identifier is part of it, one after a number starts a dollar quote). A literal left open (or one
 * the scan might misread, such as a backslash escape under standard_conforming_strings = off) is
 * redacted to the end of the text.
 *
 * With `keepCode`, a dollar-quoted literal that is a DO block's or a function's body (it follows
 * `AS`, `DO` or `DO LANGUAGE name`, and holds whitespace: `$$ BEGIN ... END $$`) is kept, with every
 * literal inside it replaced whole (nested dollar quotes included); every other literal (a default
 * value, a SET value, a body written 'BEGIN ... END') is replaced whole.
 */
export function redactLiterals(text: string, keepCode = false): string {
  const n = text.length;
  let out = "";
  let copied = 0;
  let i = 0;
  // The last three tokens (identifiers lowercased, punctuation, "'" for a literal): where a body is.
  let t1 = "";
  let t2 = "";
  let t3 = "";
  const token = (t: string) => {
    t3 = t2;
    t2 = t1;
    t1 = t;
  };
  const redact = (start: number, end: number, replacement = REDACTED) => {
    out += text.slice(copied, start) + replacement;
    copied = end;
    i = end;
    token("'");
  };
  while (i < n) {
    const c = text[i] as string;
    const next = text[i + 1];
    if (c === "-" && next === "-") {
      while (i < n && text[i] !== "\n" && text[i] !== "\r") i++;
    } else if (c === "/" && next === "*") {
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (text[i] === "/" && text[i + 1] === "*") {
          depth++;
          i += 2;
        } else if (text[i] === "*" && text[i + 1] === "/") {
          depth--;
          i += 2;
        } else i++;
      }
    } else if (c === '"') {
      const end = text.indexOf('"', i + 1);
      i = end < 0 ? n : end + 1; // "" inside an identifier: two identifiers to this scan, same result
      token('"');
    } else if (c === "'") {
      const escapes = (text[i - 1] === "e" || text[i - 1] === "E") && !IDENT_CHAR.test(text[i - 2] ?? " ");
      let j = i + 1;
      for (;;) {
        if (j >= n) {
          j = n;
          break;
        }
        const d = text[j];
        if (d === "\\") {
          // E'\'': an escaped quote; in a plain string under standard_conforming_strings = off too,
          // which this scan cannot tell: everything to the end goes.
          if (!escapes) {
            j = n;
            break;
          }
          j += 2;
          continue;
        }
        if (d === "'") {
          if (text[j + 1] === "'") {
            j += 2;
            continue;
          }
          j++;
          break;
        }
        j++;
      }
      redact(i, j);
    } else if (c === "$") {
      DOLLAR_TAG.lastIndex = i;
      const tag = DOLLAR_TAG.exec(text);
      if (!tag) {
        i++; // $1, a parameter: its digits are read as a number next
        token("$");
        continue;
      }
      const open = tag[0];
      const end = text.indexOf(open, i + open.length);
      const body = end < 0 ? "" : text.slice(i + open.length, end);
      const isBody = t1 === "as" || t1 === "do" || (t2 === "language" && t3 === "do");
      if (keepCode && isBody && /\s/.test(body)) redact(i, end + open.length, open + redactLiterals(body) + open);
      else redact(i, end < 0 ? n : end + open.length);
    } else if (IDENT_START.test(c)) {
      let j = i + 1;
      while (j < n && IDENT_CHAR.test(text[j] as string)) j++;
      token(text.slice(i, j).toLowerCase());
      i = j;
    } else if (DIGIT.test(c)) {
      // A number, with its exponent, hex digits or underscores (1e5, 0x1F, 1_000): a `$` after it
      // starts a dollar quote.
      while (i < n && /[0-9A-Za-z_.]/.test(text[i] as string)) i++;
      token("0");
    } else {
      if (!/\s/.test(c)) token(c);
      i++;
    }
  }
  return copied === 0 ? text : out + text.slice(copied);
}
