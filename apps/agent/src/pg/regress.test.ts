// PostgreSQL's own regression suite through the agent: every file of src/test/regress run by psql
// directly on one server and through the agent (a policy allowing everything) on another, and the
// two outputs compared; every statement again with the extended protocol (node-postgres), result by
// result; then every file sent by a reader, which must change nothing. Opt-in (about seven minutes;
// PostgreSQL's source is not in this repository):
//
//   MOAT_PG_REGRESS_DIR=/path/to/postgresql-15.x/src/test/regress npx vitest run apps/agent/src/pg/regress.test.ts
//
// MOAT_PG_REGRESS_ONLY=REGEX picks files; MOAT_PG_REGRESS_OUT=DIR keeps both outputs of each file
// (default: a temporary directory). docs/development.md says how to get the files.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { scanSync } from "libpg-query";
import pg from "pg";
import { startPostgres, tempDir, type TestPostgres } from "@moat/testkit";
import { ALLOW_ALL_POLICY, readPolicy } from "../test-support/bundles.js";
import { run, startHarness, type Harness } from "../test-support/pg.js";

const REGRESS = process.env.MOAT_PG_REGRESS_DIR;
const ONLY = process.env.MOAT_PG_REGRESS_ONLY ? new RegExp(process.env.MOAT_PG_REGRESS_ONLY) : undefined;

/**
 * What the agent's own syntax errors cannot say like PostgreSQL 15's: the parser (libpg-query)
 * gives no HINT or DETAIL, PostgreSQL 18's grammar words a few messages otherwise and gives a
 * position to some that had none (docs/postgres.md, "Denials and transactions").
 */
const normalize = (text: string) =>
  text
    // psql names the line it was reading when a notice arrived: a trigger's notice during COPY FROM
    // STDIN can arrive with the server's CopyInResponse through the agent (relayed in one write).
    .replace(/^psql:([^:\n]+):\d+: /gm, "psql:$1: ")
    .split("\n")
    .filter((line) => !/^(HINT|DETAIL): {2}/.test(line) && !/^LINE \d+: /.test(line) && !/^ *\^$/.test(line))
    .join("\n")
    .replace(/ at character \d+$/gm, "")
    .replace(
      /ERROR: {2}(FOREIGN KEY constraints cannot be marked NOT VALID|constraints cannot be altered to be NOT VALID)/g,
      "ERROR:  (NOT VALID)",
    )
    .replace(
      /ERROR: {2}(unsafe use of string constant with Unicode escapes|invalid Unicode escape character at or near "'\+'")/g,
      "ERROR:  (Unicode escapes)",
    );

/** A file's statements for one Parse each: psql's meta-commands dropped, split at top-level `;`. */
function statementsOf(text: string): string[] {
  const body = text
    .split("\n")
    .map((line) => (/^\s*\\/.test(line) ? "" : line))
    .join("\n");
  const bytes = Buffer.from(body);
  let tokens: { text: string; end: number }[];
  try {
    tokens = scanSync(body).tokens;
  } catch {
    return [];
  }
  const out: string[] = [];
  let start = 0;
  let depth = 0;
  let atomic = 0;
  tokens.forEach((token, i) => {
    const word = token.text.toUpperCase();
    if (token.text === "(") depth++;
    else if (token.text === ")") depth--;
    else if (word === "ATOMIC" && tokens[i - 1]?.text.toUpperCase() === "BEGIN") atomic = 1;
    else if (atomic > 0 && word === "CASE") atomic++;
    else if (atomic > 0 && word === "END") atomic--;
    else if (token.text === ";" && depth <= 0 && atomic === 0) {
      const sql = bytes.subarray(start, token.end).toString().trim();
      if (sql !== ";") out.push(sql);
      start = token.end;
      depth = 0;
    }
  });
  return out;
}

/**
 * A change of the lexical settings (or a reset of them) passes only as a simple query (docs/postgres.md,
 * "Lexical settings"): sent so by this client, as a driver must.
 */
const LEXICAL =
  /^\s*(DISCARD\s+ALL|RESET\s+ALL|(SET|RESET)\s+(SESSION\s+|LOCAL\s+)?(standard_conforming_strings|client_encoding|names)\b)/i;

/**
 * Differences the docs give: the agent's own syntax errors are 42601 (PostgreSQL raises a few
 * grammar errors with another SQLSTATE, 0A000 or 22023, and the same message), and an EXECUTE of a
 * name the agent has no record of is refused (42501) where the server says it does not exist.
 */
function knownDifference(direct: string, agent: string): boolean {
  if (agent.endsWith(" (42601)") && direct.replace(/ \(\w{5}\)$/, "") === agent.slice(0, -" (42601)".length))
    return true;
  return / \(26000\)$/.test(direct) && /was not prepared through Moat \(42501\)$/.test(agent);
}

/** What a statement gave, as one comparable string (an error by message and SQLSTATE). */
async function outcome(client: pg.Client, text: string): Promise<string> {
  const uncommented = text.replace(/^(\s*--.*\n)*/, "");
  try {
    const queryMode = LEXICAL.test(uncommented) ? undefined : "extended";
    const result = await client.query({ text, queryMode, rowMode: "array" } as pg.QueryConfig);
    return JSON.stringify([result.command, result.rowCount, result.rows]);
  } catch (error) {
    const e = error as { code?: string; message?: string };
    return normalize(`ERROR:  ${e.message} (${e.code})`);
  }
}

function files(dir: string): string[] {
  const out: string[] = [];
  for (const line of readFileSync(join(dir, "parallel_schedule"), "utf8").split("\n")) {
    const m = /^test:\s*(.*)$/.exec(line);
    if (m)
      for (const name of m[1]!.trim().split(/\s+/)) if (existsSync(join(dir, "sql", `${name}.sql`))) out.push(name);
  }
  return ONLY ? out.filter((n) => ONLY.test(n)) : out;
}

describe.skipIf(!REGRESS)("PostgreSQL's regression suite through the agent", () => {
  let direct: TestPostgres;
  let behind: TestPostgres;
  let h: Harness;
  beforeAll(async () => {
    [direct, behind] = await Promise.all([startPostgres(), startPostgres()]);
    await Promise.all([direct.createDatabase("regression"), behind.createDatabase("regression")]);
    h = await startHarness({ pg: behind, policies: [ALLOW_ALL_POLICY], listener: { readOnlySessions: false } });
  }, 120_000);
  afterAll(async () => {
    await h?.close();
    await direct?.stop();
    await behind?.stop();
  });

  it("gives psql the output of a direct connection, file by file", async () => {
    const dir = REGRESS!;
    const out = process.env.MOAT_PG_REGRESS_OUT ?? tempDir("moat-regress-");
    mkdirSync(out, { recursive: true });
    // What pg_regress sets for the suite (test_setup.sql reads PG_ABS_SRCDIR; the C functions of
    // regress.so are not built here and fail the same on both sides).
    const env = {
      PG_ABS_SRCDIR: dir,
      PG_ABS_BUILDDIR: out,
      PG_LIBDIR: "/nonexistent",
      PG_DLSUFFIX: ".so",
      PGTZ: "PST8PDT",
      PGDATESTYLE: "Postgres, MDY",
      LC_MESSAGES: "C",
    };
    const differing: string[] = [];
    for (const name of files(dir)) {
      const args = ["-X", "-a", "-q", "-v", "HIDE_TABLEAM=on", "-v", "HIDE_TOAST_COMPRESSION=on"];
      args.push("-f", join(dir, "sql", `${name}.sql`));
      const a = await run("psql", [`host=127.0.0.1 port=${direct.port} user=postgres dbname=regression`, ...args], env);
      const b = await run(
        "psql",
        [`host=127.0.0.1 port=${h.port} user=alice@example.com dbname=regression sslmode=require`, ...args],
        { ...env, PGPASSWORD: await h.token() },
      );
      const directOut = a.stdout + a.stderr;
      const agentOut = b.stdout + b.stderr;
      writeFileSync(join(out, `${name}.direct`), directOut);
      writeFileSync(join(out, `${name}.agent`), agentOut);
      if (normalize(directOut) !== normalize(agentOut)) differing.push(name);
    }
    expect(differing, `outputs differ (both kept in ${out}: diff NAME.direct NAME.agent)`).toEqual([]);
  }, 3_600_000);

  it("gives node-postgres (extended protocol) the results of a direct connection, statement by statement", async () => {
    // psql sends simple queries only: the same statements again, one Parse/Bind/Execute each, on
    // new databases of both servers, compared result by result (rows, row count, command, error).
    const dir = REGRESS!;
    await Promise.all([direct.createDatabase("regression_ext"), behind.createDatabase("regression_ext")]);
    const differing: string[] = [];
    for (const name of files(dir)) {
      const a = new pg.Client({ host: "127.0.0.1", port: direct.port, user: "postgres", database: "regression_ext" });
      const b = new pg.Client({
        host: "127.0.0.1",
        port: h.port,
        user: "alice@example.com",
        password: await h.token(),
        database: "regression_ext",
      });
      await Promise.all([a.connect(), b.connect()]);
      for (const client of [a, b]) client.on("error", () => undefined);
      try {
        for (const sql of statementsOf(readFileSync(join(dir, "sql", `${name}.sql`), "utf8"))) {
          // COPY ... STDIN/STDOUT needs a client that speaks COPY; file COPYs name this machine's paths.
          if (/^\s*copy\b/i.test(sql.replace(/^(\s*--.*\n)*/, ""))) continue;
          const [ra, rb] = [await outcome(a, sql), await outcome(b, sql)];
          if (ra !== rb && !knownDifference(ra, rb))
            differing.push(
              `${name}: ${sql.slice(0, 200)}\n  direct: ${ra.slice(0, 300)}\n  agent:  ${rb.slice(0, 300)}`,
            );
        }
      } finally {
        await Promise.all([a.end().catch(() => undefined), b.end().catch(() => undefined)]);
      }
    }
    if (process.env.MOAT_PG_REGRESS_OUT)
      writeFileSync(join(process.env.MOAT_PG_REGRESS_OUT, "extended.diff"), differing.join("\n"));
    expect(differing).toEqual([]);
  }, 3_600_000);

  it("lets a reader change nothing: the database, its roles and its counters the same after every file", async () => {
    // The database the first test built through the agent, now sent the same files again by a
    // user allowed only db:read, without the read-only session backstop: what the classifier
    // lets through must change nothing PostgreSQL keeps.
    const dir = REGRESS!;
    const reader = await startHarness({
      pg: behind,
      policies: [readPolicy()],
      listener: { readOnlySessions: false },
    });
    const state = async () => {
      const conn = ["-h", "127.0.0.1", "-p", String(behind.port), "-U", "postgres"];
      const dump = await run("pg_dump", [...conn, "--no-comments", "regression"]);
      const globals = await run("pg_dumpall", [...conn, "--globals-only"]);
      // Rows written to user tables, per table (catalog counters move with autovacuum's ANALYZE).
      const counters = await run("psql", [
        ...conn,
        "-XAtc",
        "SELECT schemaname, relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables ORDER BY 1, 2;" +
          "SELECT count(*) FROM pg_largeobject_metadata;",
        "regression",
      ]);
      // pg_dump's `\restrict KEY` lines carry a random key of each run.
      const unkeyed = (text: string) => text.replace(/^\\(un)?restrict .*$/gm, "");
      return {
        dump: unkeyed(dump.stdout),
        globals: unkeyed(globals.stdout),
        counters: counters.stdout,
        ok: dump.code === 0,
      };
    };
    try {
      const before = await state();
      expect(before.ok).toBe(true);
      for (const name of files(dir)) {
        const args = ["-X", "-a", "-q", "-f", join(dir, "sql", `${name}.sql`)];
        await run(
          "psql",
          [`host=127.0.0.1 port=${reader.port} user=alice@example.com dbname=regression sslmode=require`, ...args],
          { PG_ABS_SRCDIR: dir, PG_LIBDIR: "/nonexistent", PG_DLSUFFIX: ".so", PGPASSWORD: await reader.token() },
        );
      }
      await new Promise((r) => setTimeout(r, 1500)); // the sessions' statistics flushed at their exit
      const after = await state();
      expect(after.globals).toEqual(before.globals);
      const changed = after.counters.split("\n").filter((line) => !before.counters.split("\n").includes(line));
      expect(changed, "tables written to (schema|table|inserted|updated|deleted), after").toEqual([]);
      expect(after.dump === before.dump, "pg_dump of the database changed").toBe(true);
    } finally {
      await reader.close();
    }
  }, 3_600_000);
});
