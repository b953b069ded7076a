import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { tempDir } from "@moat/testkit";
import { migrateSqlite } from "./migrate.js";

describe("SQLite migrations", () => {
  it("redefine a referenced table without cascading to the rows that reference it", () => {
    const dir = tempDir();
    const migrations = join(dir, "migrations");
    mkdirSync(migrations);
    writeFileSync(
      join(migrations, "0001_init.sql"),
      `CREATE TABLE "Parent" ("id" TEXT PRIMARY KEY);
       CREATE TABLE "Child" ("id" TEXT PRIMARY KEY, "parentId" TEXT NOT NULL REFERENCES "Parent"("id") ON DELETE CASCADE);`,
    );
    const file = join(dir, "store.db");
    expect(migrateSqlite(file, migrations)).toEqual(["0001_init"]);
    const db = new Database(file);
    db.pragma("foreign_keys = ON");
    db.exec(`INSERT INTO "Parent" VALUES ('p1'); INSERT INTO "Child" VALUES ('c1', 'p1');`);
    db.close();
    // What Prisma writes for a changed column on SQLite: new table, copy, drop, rename.
    writeFileSync(
      join(migrations, "0002_redefine.sql"),
      `CREATE TABLE "new_Parent" ("id" TEXT PRIMARY KEY, "name" TEXT NOT NULL DEFAULT '');
       INSERT INTO "new_Parent" ("id") SELECT "id" FROM "Parent";
       DROP TABLE "Parent";
       ALTER TABLE "new_Parent" RENAME TO "Parent";`,
    );
    expect(migrateSqlite(file, migrations)).toEqual(["0002_redefine"]);
    const after = new Database(file);
    expect(after.prepare('SELECT count(*) AS n FROM "Child"').get()).toEqual({ n: 1 });
    after.close();
    // A migration that leaves dangling references is refused and not recorded.
    writeFileSync(join(migrations, "0003_break.sql"), `DELETE FROM "Parent";`);
    expect(() => migrateSqlite(file, migrations)).toThrow(/0003_break leaves 1 row\(s\) with dangling foreign keys/);
    const last = new Database(file);
    expect(last.prepare('SELECT count(*) AS n FROM "Parent"').get()).toEqual({ n: 1 });
    last.close();
  });
});
