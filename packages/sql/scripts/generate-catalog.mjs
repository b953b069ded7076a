#!/usr/bin/env node
// Regenerates src/gen/pg-catalog.ts: the names of PostgreSQL's built-in functions, operators and
// catalog relations (schema pg_catalog), and of the settings only a superuser may SET, read from a
// real server.
//
//   node packages/sql/scripts/generate-catalog.mjs                # starts a throwaway cluster
//   PG_URL=postgresql://postgres@127.0.0.1:5432/postgres node packages/sql/scripts/generate-catalog.mjs
//
// Without PG_URL it runs initdb/postgres from /usr/lib/postgresql/<newest>/bin (or $PG_BIN) on a
// free loopback port, as the `postgres` OS user when run as root, and removes the cluster after.
import { execFileSync, spawn } from "node:child_process";
import { chownSync, chmodSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "src", "gen", "pg-catalog.ts");

const QUERIES = {
  functions: "SELECT DISTINCT proname FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace ORDER BY 1",
  operators: "SELECT DISTINCT oprname FROM pg_operator WHERE oprnamespace = 'pg_catalog'::regnamespace ORDER BY 1",
  relations: "SELECT relname FROM pg_class WHERE relnamespace = 'pg_catalog'::regnamespace ORDER BY 1",
  // Functions PostgreSQL calls for attribute notation on a whole row (`u.to_json` is to_json(u)):
  // one argument (the rest defaulted) of a type a row converts to.
  rowFunctions:
    "SELECT DISTINCT proname FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace AND pronargs >= 1 " +
    "AND pronargs - pronargdefaults <= 1 AND proargtypes[0] IN ('record'::regtype, 'anyelement'::regtype, " +
    "'anycompatible'::regtype, '\"any\"'::regtype, 'anynonarray'::regtype, 'anycompatiblenonarray'::regtype) ORDER BY 1",
  superuserSettings: "SELECT name FROM pg_settings WHERE context = 'superuser' ORDER BY 1",
  // Set at server start, in the configuration files or at connection start: no SET changes them.
  fixedSettings: "SELECT name FROM pg_settings WHERE context NOT IN ('user', 'superuser') ORDER BY 1",
  // What PostgreSQL keeps from PUBLIC by default: functions without EXECUTE for PUBLIC (superuser
  // only, or granted to pg_monitor, pg_read_all_stats...), relations without SELECT for PUBLIC,
  // on the table or on any of its columns (pg_subscription grants its columns but subconninfo).
  restrictedFunctions:
    "SELECT DISTINCT proname FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace AND proacl IS NOT NULL " +
    "AND NOT EXISTS (SELECT 1 FROM aclexplode(proacl) a WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') ORDER BY 1",
  restrictedRelations:
    "SELECT relname FROM pg_class c WHERE relnamespace = 'pg_catalog'::regnamespace AND relkind IN ('r', 'v', 'm', 'p', 'f', 'S') " +
    "AND NOT EXISTS (SELECT 1 FROM aclexplode(coalesce(relacl, acldefault('r', relowner))) a " +
    "WHERE a.grantee = 0 AND a.privilege_type = 'SELECT') " +
    "AND NOT EXISTS (SELECT 1 FROM pg_attribute t, aclexplode(t.attacl) b WHERE t.attrelid = c.oid " +
    "AND b.grantee = 0 AND b.privilege_type = 'SELECT') ORDER BY 1",
  version: "SHOW server_version",
};

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function psql(url, sql) {
  return execFileSync("psql", [url, "-X", "-v", "ON_ERROR_STOP=1", "-Atc", sql], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  })
    .split("\n")
    .filter((line) => line !== "");
}

async function withServer(fn) {
  if (process.env.PG_URL) return fn(process.env.PG_URL);
  const base = "/usr/lib/postgresql";
  const bin = process.env.PG_BIN ?? join(base, readdirSync(base).sort((a, b) => Number(b) - Number(a))[0], "bin");
  const dir = mkdtempSync(join(tmpdir(), "moat-sql-gen-"));
  chmodSync(dir, 0o755);
  const asRoot = process.getuid?.() === 0;
  if (asRoot) {
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim());
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim());
    chownSync(dir, uid, gid);
  }
  const as = (cmd, args) => (asRoot ? ["runuser", ["-u", "postgres", "--", cmd, ...args]] : [cmd, args]);
  const data = join(dir, "data");
  execFileSync(...as(join(bin, "initdb"), ["-D", data, "-U", "postgres", "--auth=trust", "--no-sync"]), {
    stdio: "ignore",
  });
  const port = await freePort();
  const child = spawn(
    ...as(join(bin, "postgres"), ["-D", data, "-p", String(port), "-k", dir, "-c", "listen_addresses=127.0.0.1"]),
    {
      stdio: "ignore",
    },
  );
  const url = `postgresql://postgres@127.0.0.1:${port}/postgres`;
  try {
    for (let i = 0; ; i++) {
      try {
        psql(url, "SELECT 1");
        break;
      } catch (error) {
        if (i > 100) throw error;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    return await fn(url);
  } finally {
    child.kill("SIGTERM");
    await new Promise((r) => child.once("exit", r));
    rmSync(dir, { recursive: true, force: true });
  }
}

const list = (name, values) =>
  `export const ${name}: ReadonlySet<string> = new Set([\n${values.map((v) => `  ${JSON.stringify(v)},`).join("\n")}\n]);\n`;

await withServer(async (url) => {
  const [version] = psql(url, QUERIES.version);
  const text =
    `// GENERATED by packages/sql/scripts/generate-catalog.mjs from PostgreSQL ${version}. Do not edit.\n` +
    `// Regenerate: node packages/sql/scripts/generate-catalog.mjs (optionally PG_URL=... or PG_BIN=...).\n\n` +
    `/** The PostgreSQL version these lists were read from. */\nexport const PG_CATALOG_VERSION = ${JSON.stringify(version)};\n\n` +
    `/** Distinct names of the functions in schema pg_catalog. */\n` +
    list("PG_CATALOG_FUNCTIONS", psql(url, QUERIES.functions)) +
    `\n/** Distinct names of the operators in schema pg_catalog. */\n` +
    list("PG_CATALOG_OPERATORS", psql(url, QUERIES.operators)) +
    `\n/** Names of the relations (tables, views, indexes, sequences) in schema pg_catalog. */\n` +
    list("PG_CATALOG_RELATIONS", psql(url, QUERIES.relations)) +
    `\n/** Functions of pg_catalog callable with one row argument, so also in attribute notation (\`u.to_json\`). */\n` +
    list("PG_ROW_FUNCTIONS", psql(url, QUERIES.rowFunctions)) +
    `\n/** Settings only a superuser may change with SET (pg_settings.context = 'superuser'). */\n` +
    list("PG_SUPERUSER_SETTINGS", psql(url, QUERIES.superuserSettings)) +
    `\n/** Settings no SET may change (pg_settings.context other than user and superuser). */\n` +
    list("PG_FIXED_SETTINGS", psql(url, QUERIES.fixedSettings)) +
    `\n/** Functions of pg_catalog PUBLIC may not EXECUTE by default (some overload of the name). */\n` +
    list("PG_RESTRICTED_FUNCTIONS", psql(url, QUERIES.restrictedFunctions)) +
    `\n/** Relations of pg_catalog PUBLIC may not SELECT from by default (not even one column). */\n` +
    list("PG_RESTRICTED_RELATIONS", psql(url, QUERIES.restrictedRelations));
  writeFileSync(out, text);
  console.log(`wrote ${out}`);
});
