-- AlterTable
ALTER TABLE "User" ADD COLUMN     "oidcIssuer" TEXT,
ADD COLUMN     "oidcSubject" TEXT;

-- AlterTable
ALTER TABLE "Agent" ADD COLUMN     "bundleError" TEXT NOT NULL DEFAULT '',
ADD COLUMN     "bundleErrorAt" TIMESTAMP(3),
ADD COLUMN     "bundleErrorVersion" BIGINT NOT NULL DEFAULT 0,
ADD COLUMN     "bundleKeyId" TEXT NOT NULL DEFAULT '',
ADD COLUMN     "bundleSeq" BIGINT NOT NULL DEFAULT 0,
ADD COLUMN     "policyRevision" BIGINT NOT NULL DEFAULT 0;

-- CreateIndex
CREATE UNIQUE INDEX "User_oidcIssuer_oidcSubject_key" ON "User"("oidcIssuer", "oidcSubject");

-- Hand-written data migration: bundle versions used to be the policy revision, so every bundle
-- issued so far has a version at most the current revision; the per-agent sequence starts above it.
UPDATE "Agent" SET "bundleSeq" = GREATEST("bundleVersion", COALESCE((SELECT "value" FROM "Counter" WHERE "name" = 'policy.revision'), 0));
UPDATE "Agent" SET "policyRevision" = "bundleVersion";
