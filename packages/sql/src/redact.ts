/**
 * Keeping secrets out of the audit trail: statements that set a password or a connection string
 * (`ALTER ROLE ... PASSWORD '...'`, user mappings, foreign servers, subscriptions, `ALTER SYSTEM`,
 * dblink connections) are recorded with their string literals replaced. Pure.
 */

/** Statement kinds whose string literals may hold passwords or connection strings. */
const SECRET_KINDS: ReadonlySet<string> = new Set([
  "CreateRoleStmt",
  "AlterRoleStmt",
  "CreateUserMappingStmt",
  "AlterUserMappingStmt",
  "CreateForeignServerStmt",
  "AlterForeignServerStmt",
  "CreateSubscriptionStmt",
  "AlterSubscriptionStmt",
  "AlterSystemStmt",
]);

/** Whether a statement's text may hold a secret in its literals (see SECRET_KINDS; dblink's connection strings). */
export function mayHoldSecrets(info: { kind: string; functions: readonly string[] }): boolean {
  return SECRET_KINDS.has(info.kind) || info.functions.some((f) => /(^|\.)dblink/.test(f));
}

/** Statement kinds that carry code (a DO block, a function's or procedure's body). */
const CODE_KINDS: ReadonlySet<string> = new Set(["DoStmt", "CreateFunctionStmt"]);

/**
 * Words that, in a DO block or a function body, suggest a password or a connection string set by
 * the code (`EXECUTE format('ALTER ROLE %I PASSWORD %L', ...)`, `dblink_connect(...)`, a user
 * mapping, a subscription's connection). Matching more than needed only redacts more.
 */
const SECRET_WORDS = /passw|conninfo|connection|dblink|mapping|subscription|server|secret/i;

/**
 * A statement's text as the audit trail keeps it. Statements that set a password or a connection
 * string (mayHoldSecrets) lose their string literals. A DO block or a function definition whose
 * text names such a thing (SECRET_WORDS) keeps its code but loses every literal in it: its body is
 * kept, with the literals inside the body replaced. Anything else is kept as written.
 */
export function auditStatementText(info: { kind: string; functions: readonly string[] }, text: string): string {
  if (mayHoldSecrets(info)) return redactLiterals(text);
  if (CODE_KINDS.has(info.kind) && SECRET_WORDS.test(text)) return redactLiterals(text, true);
  return text;
}

const REDACTED = "'***'";
const isIdentChar = (c: string | undefined) => c !== undefined && /[A-Za-z0-9_$\u0080-\uffff]/.test(c);

/**
 * `text` with every string literal ('...', E'...', $tag$...$tag$) replaced by '***'. Comments and
 * quoted identifiers are skipped over; a literal left open (or one the scan might misread, such as
 * a backslash escape under standard_conforming_strings = off) is redacted to the end of the text.
 *
 * With `keepCode`, a dollar-quoted literal holding whitespace (a DO block's or a function's body:
 * `$$ BEGIN ... END $$`) is kept, with every literal inside it replaced (nested dollar quotes
 * included, whole); a dollar-quoted literal without whitespace (a value: `$$hunter2$$`) and every
 * single-quoted literal (a body written 'BEGIN ... END' too) are replaced whole.
 */
export function redactLiterals(text: string, keepCode = false): string {
  const n = text.length;
  let out = "";
  let copied = 0;
  let i = 0;
  const redact = (start: number, end: number, replacement = REDACTED) => {
    out += text.slice(copied, start) + replacement;
    copied = end;
    i = end;
  };
  while (i < n) {
    const c = text[i];
    const next = text[i + 1];
    if (c === "-" && next === "-") {
      const end = text.indexOf("\n", i);
      i = end < 0 ? n : end;
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
    } else if (c === "'") {
      const escapes = /[eE]/.test(text[i - 1] ?? "") && !isIdentChar(text[i - 2]);
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
    } else if (c === "$" && !isIdentChar(text[i - 1])) {
      const tag = /^\$([A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/.exec(text.slice(i, i + 64));
      if (!tag) {
        i++;
        continue;
      }
      const open = tag[0];
      const end = text.indexOf(open, i + open.length);
      const body = end < 0 ? "" : text.slice(i + open.length, end);
      if (keepCode && /\s/.test(body)) redact(i, end + open.length, open + redactLiterals(body) + open);
      else redact(i, end < 0 ? n : end + open.length);
    } else {
      i++;
    }
  }
  return copied === 0 ? text : out + text.slice(copied);
}
