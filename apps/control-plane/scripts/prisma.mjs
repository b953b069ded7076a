#!/usr/bin/env node
// Prisma tasks for the control-plane store, offline-safe (Prisma's CLI otherwise downloads native
// engines; we use its JS/wasm engines and driver adapters instead, see shared STACK notes).
//
//   node scripts/prisma.mjs generate         derive the PostgreSQL schema, generate both clients
//   node scripts/prisma.mjs migration NAME   author migration NAME for both providers from the
//                                            schema change since the last migration (the PostgreSQL
//                                            diff needs a reachable server: MOAT_DIFF_PG_URL)
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const prismaDir = join(root, "prisma");
const sqliteSchema = join(prismaDir, "schema.prisma");
const postgresSchema = join(prismaDir, "postgres", "schema.prisma");
const snapshot = join(prismaDir, "migrations", "schema.snapshot.prisma");
const prismaBin = join(root, "node_modules", ".bin", "prisma");

const env = {
  ...process.env,
  CHECKPOINT_DISABLE: "1",
  PRISMA_HIDE_UPDATE_MESSAGE: "1",
  // Never download native engines: generation and diffing run on the JS/wasm engines.
  PRISMA_SCHEMA_ENGINE_BINARY: process.env.PRISMA_SCHEMA_ENGINE_BINARY ?? "/bin/true",
  PRISMA_QUERY_ENGINE_LIBRARY: process.env.PRISMA_QUERY_ENGINE_LIBRARY ?? "/bin/true",
  DATABASE_URL: process.env.DATABASE_URL ?? "file:./unused.db",
};

function toPostgres(schema) {
  return (
    "// GENERATED from ../schema.prisma by scripts/prisma.mjs; edit that file instead.\n" +
    schema
      .replace('provider = "sqlite"', 'provider = "postgresql"')
      .replace('"../src/store/generated/sqlite"', '"../../src/store/generated/postgres"')
  );
}

function derivePostgres() {
  const text = toPostgres(readFileSync(sqliteSchema, "utf8"));
  mkdirSync(dirname(postgresSchema), { recursive: true });
  writeFileSync(postgresSchema, text);
}

function run(args, options = {}) {
  return execFileSync(prismaBin, args, { cwd: root, env, encoding: "utf8", ...options });
}

function writeConfig(provider) {
  const file = join(prismaDir, `.diff.${provider}.config.mjs`);
  const adapter =
    provider === "sqlite"
      ? `import { PrismaBetterSQLite3 as A } from "@prisma/adapter-better-sqlite3"; const make = () => new A({ url: "file::memory:" });`
      : `import { PrismaPg as A } from "@prisma/adapter-pg"; const make = () => new A({ connectionString: "${process.env.MOAT_DIFF_PG_URL ?? "postgresql://postgres@127.0.0.1:55432/postgres"}" });`;
  writeFileSync(
    file,
    `import { defineConfig } from "prisma/config"; ${adapter}
export default defineConfig({ experimental: { adapter: true }, engine: "js", async adapter() { return make(); } });\n`,
  );
  return file;
}

function diff(provider, fromFile, toFile) {
  const config = writeConfig(provider);
  try {
    const from = fromFile ? ["--from-schema-datamodel", fromFile] : ["--from-empty"];
    const out = run(["migrate", "diff", "--config", config, ...from, "--to-schema-datamodel", toFile, "--script"], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    return out.replace(/^Loaded Prisma config.*\n/m, "");
  } finally {
    rmSync(config, { force: true });
  }
}

const [command, name] = process.argv.slice(2);
if (command === "generate") {
  derivePostgres();
  for (const schema of [sqliteSchema, postgresSchema]) {
    run(["generate", "--schema", schema], { stdio: ["ignore", "ignore", "inherit"] });
  }
} else if (command === "migration") {
  if (!name || !/^[a-z0-9_]+$/.test(name)) throw new Error("usage: prisma.mjs migration NAME (lowercase, digits, _)");
  derivePostgres();
  const snapshotPg = join(prismaDir, "migrations", ".snapshot.postgres.prisma");
  const hasSnapshot = existsSync(snapshot);
  if (hasSnapshot) writeFileSync(snapshotPg, toPostgres(readFileSync(snapshot, "utf8")));
  for (const provider of ["sqlite", "postgres"]) {
    const dir = join(prismaDir, "migrations", provider);
    mkdirSync(dir, { recursive: true });
    const next = String(readdirSync(dir).filter((f) => f.endsWith(".sql")).length + 1).padStart(4, "0");
    const to = provider === "sqlite" ? sqliteSchema : postgresSchema;
    const from = hasSnapshot ? (provider === "sqlite" ? snapshot : snapshotPg) : undefined;
    const sql = diff(provider, from, to);
    if (!/\S/.test(sql.replace(/^--.*$/gm, ""))) {
      console.log(`${provider}: no schema change`);
      continue;
    }
    writeFileSync(join(dir, `${next}_${name}.sql`), sql);
    console.log(`${provider}: wrote migrations/${provider}/${next}_${name}.sql`);
  }
  rmSync(snapshotPg, { force: true });
  writeFileSync(snapshot, readFileSync(sqliteSchema, "utf8"));
} else {
  console.error("usage: prisma.mjs generate | migration NAME");
  process.exit(2);
}
