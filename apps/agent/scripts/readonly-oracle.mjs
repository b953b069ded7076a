#!/usr/bin/env node
// Differential check of the SQL classifier against PostgreSQL itself.
//
// Runs SQL files (for example PostgreSQL's own regression suite, src/test/regress/sql of its
// source, in parallel_schedule order) statement by statement against a scratch PostgreSQL 15
// cluster. Every statement the classifier lets a read-only policy run (every statement's class
// `read` or `session`) is first run inside a READ ONLY transaction (or a READ ONLY savepoint when
// the file has a transaction open) and rolled back: when PostgreSQL refuses it there with 25006
// ("cannot execute ... in a read-only transaction"), the classifier took a write for a read, and
// the statement is reported. Then the statement runs normally, so that the files' later
// statements find the state they expect.
//
// PostgreSQL's read-only check is the oracle for what it covers (writes to tables, DDL, sequence
// changes, large objects, NOTIFY...), not for side effects outside the database (signals, files,
// settings), which attacks.test.ts covers by hand. A second oracle (probePrivileges) runs the
// statement again as a role that may read only the tables the classifier named. Also reported:
// statements PostgreSQL runs that the classifier cannot parse (denied: a usability problem, not a
// leak). docs/development.md lists the known answers that are not findings.
//
// usage: node apps/agent/scripts/readonly-oracle.mjs --regress DIR [FILE-REGEX]   (DIR = .../src/test/regress)
//        node apps/agent/scripts/readonly-oracle.mjs FILE.sql ...
// ORACLE_ALL=1 probes every statement (a check of the oracle itself: writes must show up);
// ORACLE_PRIVILEGES=0 skips the second oracle.
// Needs PostgreSQL 15's server binaries (/usr/lib/postgresql/15/bin). Loopback only; stops itself.
import { spawn, spawnSync } from "node:child_process";
import { chownSync, mkdtempSync, readFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, basename } from "node:path";
import { createServer } from "node:net";
import pg from "pg";
import { createClassifier, loadSqlParser } from "@moat/sql";
import { scanSync } from "libpg-query";

const BIN = process.env.PG_BIN ?? "/usr/lib/postgresql/15/bin";
const args = process.argv.slice(2);
let files = [];
let dataDir = "/nonexistent";
if (args[0] === "--regress") {
  const dir = args[1];
  dataDir = dir;
  const schedule = readFileSync(join(dir, "parallel_schedule"), "utf8");
  for (const line of schedule.split("\n")) {
    const m = line.match(/^test:\s*(.*)$/);
    if (m) for (const name of m[1].trim().split(/\s+/)) files.push(join(dir, "sql", `${name}.sql`));
  }
  files = files.filter((f) => existsSync(f));
  if (args[2]) files = files.filter((f) => new RegExp(args[2]).test(basename(f)));
} else files = args;
if (files.length === 0) {
  console.error("usage: readonly-oracle.mjs --regress DIR [FILE-REGEX] | FILE.sql ...");
  process.exit(2);
}

const freePort = () =>
  new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });

// As root, PostgreSQL runs as the `postgres` OS user (it refuses root).
let asPostgres = {};
if (process.getuid?.() === 0) {
  const entry = readFileSync("/etc/passwd", "utf8")
    .split("\n")
    .find((l) => l.startsWith("postgres:"));
  if (!entry) throw new Error("as root, this needs a `postgres` OS user");
  const [, , uid, gid] = entry.split(":");
  asPostgres = { uid: Number(uid), gid: Number(gid) };
}
const work = mkdtempSync(join(tmpdir(), "moat-oracle-"));
if (asPostgres.uid !== undefined) chownSync(work, asPostgres.uid, asPostgres.gid);
const pgdata = join(work, "data");
const init = spawnSync(
  join(BIN, "initdb"),
  ["-D", pgdata, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C"],
  { encoding: "utf8", ...asPostgres },
);
if (init.status !== 0) throw new Error(init.stderr);
const port = await freePort();
const server = spawn(
  join(BIN, "postgres"),
  [
    "-D",
    pgdata,
    "-p",
    String(port),
    "-k",
    work,
    "-c",
    "listen_addresses=127.0.0.1",
    "-c",
    "fsync=off",
    "-c",
    "max_prepared_transactions=10",
  ],
  { stdio: ["ignore", "ignore", "pipe"], ...asPostgres },
);
let serverLog = "";
server.stderr.on("data", (d) => (serverLog = (serverLog + d).slice(-4000)));
const stop = () => {
  server.kill("SIGINT");
  rmSync(work, { recursive: true, force: true });
};
process.on("exit", stop);
const hardStop = setTimeout(() => {
  console.error("readonly-oracle: 40 minutes passed, stopping");
  process.exit(3);
}, 40 * 60_000);
hardStop.unref();

const connect = async (database) => {
  for (let i = 0; ; i++) {
    const client = new pg.Client({ host: "127.0.0.1", port, user: "postgres", database, statement_timeout: 10_000 });
    try {
      await client.connect();
      client.on("error", () => {});
      return client;
    } catch (error) {
      if (i > 50) throw new Error(`${error.message}\n${serverLog}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
};
{
  const admin = await connect("postgres");
  await admin.query("CREATE DATABASE regression");
  await admin.query("CREATE ROLE moat_probe NOLOGIN");
  await admin.end();
}

await loadSqlParser();
const classifier = createClassifier({ cacheEntries: 0 });
const ON = { standardConformingStrings: true };

/** The file's statements, psql's meta-commands dropped and its variables substituted. */
function statementsOf(text, vars) {
  const lines = [];
  for (const line of text.split("\n")) {
    const meta = line.match(/^\s*\\(\w+)\s*(.*)$/);
    if (!meta) {
      lines.push(line);
      continue;
    }
    lines.push("");
    if (meta[1] === "set") {
      const [name, ...rest] = meta[2].trim().split(/\s+/);
      vars[name] = rest
        .map((part) => (part.startsWith(":") ? (vars[part.slice(1)] ?? "") : part.replace(/^'(.*)'$/, "$1")))
        .join("");
    }
  }
  let body = lines.join("\n");
  for (const [name, value] of Object.entries(vars)) {
    body = body
      .replaceAll(`:'${name}'`, `'${value.replaceAll("'", "''")}'`)
      .replaceAll(`:"${name}"`, `"${value}"`)
      .replace(new RegExp(`:${name}\\b`, "g"), value);
  }
  const bytes = Buffer.from(body);
  let tokens;
  try {
    tokens = scanSync(body).tokens;
  } catch {
    return body
      .split(/;\s*\n/)
      .map((s) => s.trim())
      .filter(Boolean);
  }
  const out = [];
  let start = 0;
  let depth = 0;
  let atomic = 0;
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    const word = t.text.toUpperCase();
    if (t.text === "(") depth++;
    else if (t.text === ")") depth--;
    else if (word === "ATOMIC" && tokens[i - 1]?.text.toUpperCase() === "BEGIN") atomic = 1;
    else if (atomic && word === "CASE") atomic++;
    else if (atomic && word === "END") atomic--;
    else if (t.text === ";" && depth <= 0 && atomic === 0) {
      const s = bytes.subarray(start, t.end).toString().trim();
      if (s !== ";") out.push(s);
      start = t.end;
      depth = 0;
    }
  }
  const tail = bytes.subarray(start).toString().trim();
  if (tail) out.push(tail);
  return out;
}

const onlyReads = (result) =>
  result.ok && result.statements.every((s) => s.statementClass === "read" || s.statementClass === "session");

const PRIVILEGES = process.env.ORACLE_PRIVILEGES !== "0";
const denials = [];
const quoteIdent = (name) => `"${name.replaceAll('"', '""')}"`;
/**
 * The second oracle: the statement run by a role that may read exactly the tables the classifier
 * names (and use every schema), nothing else. PostgreSQL refusing it a table means a table-scoped
 * read policy would have judged the statement by fewer tables than it reads; refusing it a
 * function means a read-only user could call a function PostgreSQL keeps for privileged roles.
 */
async function probePrivileges(sql, cls, inBlock, run, status) {
  const tables = new Map();
  for (const s of cls.statements)
    for (const use of s.actions)
      for (const t of use.tables) {
        const name = [t.catalog, t.schema, t.name]
          .filter((p) => p !== undefined)
          .map(quoteIdent)
          .join(".");
        tables.set(name, t);
      }
  const grants = [...tables.keys()].map((name) => `GRANT SELECT ON ${name} TO moat_probe;`).join(" ");
  if (inBlock) await run("SAVEPOINT moat_oracle");
  else await run("BEGIN");
  const setup = await run(
    `DO $$ DECLARE n name; BEGIN FOR n IN SELECT nspname FROM pg_namespace LOOP EXECUTE format('GRANT USAGE ON SCHEMA %I TO moat_probe', n); END LOOP; END $$;`,
  );
  // A table the classifier names that does not exist (a CTE's name, a failed CREATE's): nothing to grant.
  const granted = setup ? setup : grants ? await run(grants) : undefined;
  if (!granted) {
    await run("SET LOCAL ROLE moat_probe; SET TRANSACTION READ ONLY");
    const error = await run(sql);
    const denied = error?.code === "42501" && /permission denied for (\w+(?: \w+)?) (.*)$/.exec(error.message);
    // A table the classifier named, refused for another privilege than SELECT (EXPLAIN of an UPDATE,
    // FOR UPDATE): named, so judged by it.
    const named =
      denied &&
      /table|view|sequence|relation/.test(denied[1]) &&
      [...tables.values()].some((t) => t.name === denied[2]);
    if (denied && !named) denials.push({ file: currentFile, sql, error: error.message, tables: [...tables.keys()] });
  }
  if (status() !== "I") await run(inBlock ? "ROLLBACK TO SAVEPOINT moat_oracle; RELEASE moat_oracle" : "ROLLBACK");
}
let currentFile = "";

const findings = [];
const unparsed = [];
let statements = 0;
let probed = 0;
const started = Date.now();
for (const file of files) {
  const vars = { abs_srcdir: dataDir, abs_builddir: work, libdir: "/nonexistent", dlsuffix: ".so" };
  const list = statementsOf(readFileSync(file, "utf8"), vars);
  currentFile = basename(file);
  let client = await connect("regression");
  let txStatus = "I";
  const watch = (c) => c.connection.on("readyForQuery", (m) => (txStatus = m.status));
  watch(client);
  const run = async (sql) => {
    try {
      await client.query(sql);
      return undefined;
    } catch (error) {
      if (!client.connection.stream.writable || error.message.includes("Connection terminated")) {
        client = await connect("regression");
        txStatus = "I";
        watch(client);
      }
      return error;
    }
  };
  for (const sql of list) {
    statements++;
    const cls = classifier.classify(sql, ON);
    if ((process.env.ORACLE_ALL === "1" || onlyReads(cls)) && txStatus !== "E") {
      probed++;
      const inBlock = txStatus === "T";
      if (inBlock) await run("SAVEPOINT moat_oracle; SET TRANSACTION READ ONLY");
      else await run("BEGIN TRANSACTION READ ONLY");
      const error = await run(sql);
      if (error?.code === "25006")
        findings.push({
          file: basename(file),
          sql,
          error: error.message,
          classes: cls.statements.map((s) => s.statementClass),
        });
      if (inBlock) await run("ROLLBACK TO SAVEPOINT moat_oracle; RELEASE moat_oracle");
      else if (txStatus !== "I") await run("ROLLBACK");
      if (PRIVILEGES && txStatus !== "E") await probePrivileges(sql, cls, inBlock, run, () => txStatus);
    }
    const error = await run(sql);
    if (!cls.ok && !error) unparsed.push({ file: basename(file), sql, error: cls.error.message });
  }
  await client.end().catch(() => {});
  process.stderr.write(
    `${basename(file)}: ${list.length} statements; ${findings.length} findings so far (${((Date.now() - started) / 1000).toFixed(0)} s)\n`,
  );
}

const cut = (s) => (s.length > 300 ? `${s.slice(0, 300)}...` : s).replace(/\s+/g, " ");
console.log(
  `${statements} statements in ${files.length} files; ${probed} classified read-only and probed in a READ ONLY transaction`,
);
console.log(`\n${findings.length} refused by PostgreSQL as writes (25006) although classified read-only:`);
for (const f of findings) console.log(`- ${f.file}: ${cut(f.sql)}\n    ${f.error} [${f.classes.join(", ")}]`);
console.log(`\n${denials.length} refused by PostgreSQL to a role granted only the tables the classifier named:`);
for (const f of denials) console.log(`- ${f.file}: ${cut(f.sql)}\n    ${f.error} [named: ${f.tables.join(", ")}]`);
console.log(`\n${unparsed.length} run by PostgreSQL but not parsed by the classifier (denied):`);
for (const f of unparsed) console.log(`- ${f.file}: ${cut(f.sql)}\n    ${f.error}`);
process.exit(0);
