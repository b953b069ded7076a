-- AlterTable
ALTER TABLE "User" ADD COLUMN "oidcIssuer" TEXT;
ALTER TABLE "User" ADD COLUMN "oidcSubject" TEXT;

-- AlterTable
-- Prisma would redefine "Agent" (new table, copy, drop, rename). Inside the migration's transaction
-- `PRAGMA foreign_keys=OFF` has no effect, so dropping "Agent" would cascade to "Resource": the
-- columns are added in place instead (same definitions, appended at the end of the table).
ALTER TABLE "Agent" ADD COLUMN "bundleSeq" BIGINT NOT NULL DEFAULT 0;
ALTER TABLE "Agent" ADD COLUMN "policyRevision" BIGINT NOT NULL DEFAULT 0;
ALTER TABLE "Agent" ADD COLUMN "bundleKeyId" TEXT NOT NULL DEFAULT '';
ALTER TABLE "Agent" ADD COLUMN "bundleError" TEXT NOT NULL DEFAULT '';
ALTER TABLE "Agent" ADD COLUMN "bundleErrorVersion" BIGINT NOT NULL DEFAULT 0;
ALTER TABLE "Agent" ADD COLUMN "bundleErrorAt" DATETIME;

-- CreateIndex
CREATE UNIQUE INDEX "User_oidcIssuer_oidcSubject_key" ON "User"("oidcIssuer", "oidcSubject");

-- Hand-written data migration: bundle versions used to be the policy revision, so every bundle
-- issued so far has a version at most the current revision; the per-agent sequence starts above it.
UPDATE "Agent" SET "bundleSeq" = MAX("bundleVersion", COALESCE((SELECT "value" FROM "Counter" WHERE "name" = 'policy.revision'), 0));
UPDATE "Agent" SET "policyRevision" = "bundleVersion";
