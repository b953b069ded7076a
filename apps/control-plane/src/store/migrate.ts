/**
 * Applies the SQL migrations in prisma/migrations/<provider> in order, once each, recording them in
 * `_moat_migrations`. Runs at start, before the Prisma client opens. On PostgreSQL an advisory lock
 * serialises replicas that start together. Each migration runs in its own transaction.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import pg from "pg";

export type StoreProvider = "sqlite" | "postgres";

/** Migration files for a provider, sorted by name. */
export function listMigrations(dir: string): { name: string; sql: string }[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith(".sql"))
    .sort()
    .map((f) => ({ name: f.replace(/\.sql$/, ""), sql: readFileSync(join(dir, f), "utf8") }));
}

/** Applies pending SQLite migrations; returns the names applied now. */
export function migrateSqlite(file: string, dir: string): string[] {
  const db = new Database(file);
  try {
    db.pragma("journal_mode = WAL");
    db.exec('CREATE TABLE IF NOT EXISTS "_moat_migrations" ("name" TEXT PRIMARY KEY, "appliedAt" TEXT NOT NULL)');
    const done = new Set(
      (db.prepare('SELECT "name" FROM "_moat_migrations"').all() as { name: string }[]).map((r) => r.name),
    );
    const applied: string[] = [];
    // SQLite changes a table by creating a new one, copying and dropping the old: with foreign keys
    // on, that drop would cascade to every referencing row. They are off while migrating (the pragma
    // has no effect inside a transaction, hence here) and checked before the migration commits.
    db.pragma("foreign_keys = OFF");
    for (const migration of listMigrations(dir)) {
      if (done.has(migration.name)) continue;
      db.transaction(() => {
        db.exec(migration.sql);
        const broken = db.pragma("foreign_key_check") as unknown[];
        if (broken.length > 0)
          throw new Error(`migration ${migration.name} leaves ${broken.length} row(s) with dangling foreign keys`);
        db.prepare('INSERT INTO "_moat_migrations" ("name", "appliedAt") VALUES (?, ?)').run(
          migration.name,
          new Date().toISOString(),
        );
      })();
      applied.push(migration.name);
    }
    db.pragma("foreign_keys = ON");
    return applied;
  } finally {
    db.close();
  }
}

const ADVISORY_LOCK_KEY = 0x6d6f6174; // "moat"

/** Applies pending PostgreSQL migrations; returns the names applied now. */
export async function migratePostgres(connectionString: string, dir: string): Promise<string[]> {
  const client = new pg.Client({ connectionString });
  await client.connect();
  try {
    await client.query("SELECT pg_advisory_lock($1)", [ADVISORY_LOCK_KEY]);
    await client.query(
      'CREATE TABLE IF NOT EXISTS "_moat_migrations" ("name" TEXT PRIMARY KEY, "appliedAt" TIMESTAMPTZ NOT NULL)',
    );
    const { rows } = await client.query<{ name: string }>('SELECT "name" FROM "_moat_migrations"');
    const done = new Set(rows.map((r) => r.name));
    const applied: string[] = [];
    for (const migration of listMigrations(dir)) {
      if (done.has(migration.name)) continue;
      await client.query("BEGIN");
      try {
        await client.query(migration.sql);
        await client.query('INSERT INTO "_moat_migrations" ("name", "appliedAt") VALUES ($1, now())', [migration.name]);
        await client.query("COMMIT");
      } catch (error) {
        await client.query("ROLLBACK");
        throw new Error(`migration ${migration.name} failed`, { cause: error });
      }
      applied.push(migration.name);
    }
    return applied;
  } finally {
    await client.query("SELECT pg_advisory_unlock($1)", [ADVISORY_LOCK_KEY]).catch(() => undefined);
    await client.end();
  }
}
