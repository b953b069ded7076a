// PostgreSQL's own regression suite through the agent: every file of src/test/regress run by psql
// directly on one server and through the agent (a policy allowing everything) on another, and the
// two outputs compared. Opt-in (about four minutes; PostgreSQL's source is not in this repository):
//
//   MOAT_PG_REGRESS_DIR=/path/to/postgresql-15.x/src/test/regress npx vitest run apps/agent/src/pg/regress.test.ts
//
// MOAT_PG_REGRESS_ONLY=REGEX picks files; MOAT_PG_REGRESS_OUT=DIR keeps both outputs of each file
// (default: a temporary directory); MOAT_PG_REGRESS_MASK=1 adds a masking rule matching no column,
// so that every result goes through the masking path. docs/development.md says how to get the files.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startPostgres, tempDir, type TestPostgres } from "@moat/testkit";
import { run, startHarness, type Harness } from "../test-support/pg.js";

const REGRESS = process.env.MOAT_PG_REGRESS_DIR;
const ONLY = process.env.MOAT_PG_REGRESS_ONLY ? new RegExp(process.env.MOAT_PG_REGRESS_ONLY) : undefined;
const MASK = process.env.MOAT_PG_REGRESS_MASK === "1";

const POLICY = {
  apiVersion: "moat.dev/v1",
  kind: "Policy",
  metadata: { name: "all" },
  spec: {
    subjects: { groups: ["eng"] },
    resources: { names: ["db"] },
    rules: [{ name: "all", effect: "allow", actions: ["connect", "db:*"] }],
    ...(MASK ? { masking: [{ columns: ["moat_no_such_column"], style: "full" }] } : {}),
  },
};

/**
 * What the agent's own syntax errors cannot say like PostgreSQL 15's: the parser (libpg-query)
 * gives no HINT or DETAIL, PostgreSQL 18's grammar words a few messages otherwise and gives a
 * position to some that had none (docs/postgres.md, "Denials and transactions").
 */
const normalize = (text: string) =>
  text
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
    h = await startHarness({ pg: behind, policies: [POLICY], listener: { readOnlySessions: false } });
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

  it("lets a reader change nothing: the database, its roles and its counters the same after every file", async () => {
    // The database the first test built through the agent, now sent the same files again by a
    // user allowed only db:read, without the read-only session backstop: what the classifier
    // lets through must change nothing PostgreSQL keeps.
    const dir = REGRESS!;
    const reader = await startHarness({
      pg: behind,
      policies: [
        {
          ...POLICY,
          spec: { ...POLICY.spec, rules: [{ name: "read", effect: "allow", actions: ["connect", "db:read"] }] },
        },
      ],
      listener: { readOnlySessions: false },
    });
    const state = async () => {
      const conn = ["-h", "127.0.0.1", "-p", String(behind.port), "-U", "postgres"];
      const dump = await run("pg_dump", [...conn, "--no-comments", "regression"]);
      const globals = await run("pg_dumpall", [...conn, "--globals-only"]);
      const counters = await run("psql", [
        ...conn,
        "-XAtc",
        "SELECT tup_inserted, tup_updated, tup_deleted, xact_commit > 0 FROM pg_stat_database WHERE datname = 'regression';" +
          "SELECT sum(n_tup_ins + n_tup_upd + n_tup_del) FROM pg_stat_all_tables;" +
          "SELECT count(*) FROM pg_largeobject_metadata;",
        "regression",
      ]);
      return { dump: dump.stdout, globals: globals.stdout, counters: counters.stdout, ok: dump.code === 0 };
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
      expect(after.counters).toEqual(before.counters);
      expect(after.dump === before.dump, "pg_dump of the database changed").toBe(true);
    } finally {
      await reader.close();
    }
  }, 3_600_000);
});
