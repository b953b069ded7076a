/**
 * The control-plane store: opens SQLite (embedded default) or PostgreSQL from one URL, applies
 * migrations, and exposes narrow repositories that speak Moat's domain types, never Prisma's.
 * Nothing outside this folder imports Prisma.
 */
import { mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { PrismaBetterSQLite3 } from "@prisma/adapter-better-sqlite3";
import { PrismaPg } from "@prisma/adapter-pg";
import { AppError } from "@moat/common";
import { PrismaClient as SqliteClient } from "./generated/sqlite/client.js";
import { PrismaClient as PostgresClient } from "./generated/postgres/client.js";
import { migratePostgres, migrateSqlite, type StoreProvider } from "./migrate.js";
import { createRepositories, type Repositories } from "./repositories.js";
import { createAuditSinkRepository, type AuditSinkRepository } from "./audit-sinks.js";
import { createAuditTrailRepository, type AuditTrailRepository } from "./audit-trail.js";
import { startWalCheckpointer } from "./wal-checkpointer.js";

export type { StoreProvider } from "./migrate.js";
export * from "./repositories.js";
export type { AuditSinkRepository, SinkEventRow, SourcePosition } from "./audit-sinks.js";
export {
  STATEMENT_TYPES,
  type AuditHorizonRecord,
  type AuditSessionFilter,
  type AuditSessionRecord,
  type AuditTrailRepository,
  type IngestRow,
  type PruneReport,
} from "./audit-trail.js";

const migrationsRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "prisma", "migrations");

export interface Store extends Repositories {
  readonly provider: StoreProvider;
  /** Cursors, leases and event reads of the audit sinks (src/audit-sinks/). */
  auditSinks: AuditSinkRepository;
  /** Batched audit ingestion, session summaries and retention (raw SQL on the driver; audit-trail.ts). */
  auditTrail: AuditTrailRepository;
  /** Fails when the database does not answer (readiness). */
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** Which provider a database URL names. */
export function providerOf(url: string): StoreProvider {
  if (url.startsWith("file:")) return "sqlite";
  if (url.startsWith("postgres://") || url.startsWith("postgresql://")) return "postgres";
  throw new AppError("bad_request", 'database URL must start with "file:" (SQLite) or "postgresql://"');
}

/** SQLite file path of a `file:` URL (relative paths resolve from the working directory). */
function sqlitePath(url: string): string {
  return resolve(url.slice("file:".length).replace(/\?.*$/, ""));
}

/** Opens the store at `url`, applying pending migrations first. */
export async function openStore(url: string): Promise<Store & { migrationsApplied: string[] }> {
  const provider = providerOf(url);
  if (provider === "sqlite") {
    const file = sqlitePath(url);
    mkdirSync(dirname(file), { recursive: true });
    const migrationsApplied = migrateSqlite(file, join(migrationsRoot, "sqlite"));
    const client = new SqliteClient({
      adapter: new PrismaBetterSQLite3({ url: `file:${file}`, timeout: 5000 }),
    });
    await client.$executeRawUnsafe("PRAGMA foreign_keys = ON");
    // WAL checkpoints run in a worker thread, off the event loop (wal-checkpointer.ts); should it
    // fail, both connections go back to SQLite's own automatic checkpoints.
    await client.$executeRawUnsafe("PRAGMA wal_autocheckpoint = 0");
    const trail: { current?: ReturnType<typeof createAuditTrailRepository> } = {};
    const checkpointer = await startWalCheckpointer(file, {
      onFailure: () => {
        trail.current?.walAutoCheckpoint(1000);
        void client.$executeRawUnsafe("PRAGMA wal_autocheckpoint = 1000").catch(() => undefined);
      },
    });
    const auditTrail = createAuditTrailRepository(client, {
      provider,
      file,
      beforeWrite: () => checkpointer.makeRoom(),
    });
    trail.current = auditTrail;
    if (checkpointer.failed) auditTrail.walAutoCheckpoint(1000); // it failed before the writer existed
    return {
      provider,
      migrationsApplied,
      ...createRepositories(client),
      auditSinks: createAuditSinkRepository(client),
      auditTrail,
      ping: async () => {
        await client.$queryRawUnsafe("SELECT 1");
      },
      close: async () => {
        await auditTrail.close();
        await checkpointer.close();
        await client.$disconnect();
      },
    };
  }
  const migrationsApplied = await migratePostgres(url, join(migrationsRoot, "postgres"));
  const client = new PostgresClient({ adapter: new PrismaPg({ connectionString: url }) });
  const auditTrail = createAuditTrailRepository(client as unknown as SqliteClient, { provider, url });
  return {
    provider,
    migrationsApplied,
    // The two generated clients come from one datamodel and differ only in provider; their model
    // delegates have identical shapes, so the repositories are written once against one of them.
    ...createRepositories(client as unknown as SqliteClient),
    auditSinks: createAuditSinkRepository(client as unknown as SqliteClient),
    auditTrail,
    ping: async () => {
      await client.$queryRawUnsafe("SELECT 1");
    },
    close: async () => {
      await auditTrail.close();
      await client.$disconnect();
    },
  };
}
