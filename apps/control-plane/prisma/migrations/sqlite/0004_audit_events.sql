-- CreateTable
CREATE TABLE "AuditEvent" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "agentId" TEXT NOT NULL,
    "seq" BIGINT NOT NULL,
    "time" DATETIME NOT NULL,
    "type" TEXT NOT NULL,
    "user" TEXT NOT NULL DEFAULT '',
    "resource" TEXT NOT NULL DEFAULT '',
    "sessionId" TEXT NOT NULL DEFAULT '',
    "verdict" TEXT NOT NULL DEFAULT '',
    "rule" TEXT NOT NULL DEFAULT '',
    "text" TEXT NOT NULL DEFAULT '',
    "bundleVersion" BIGINT NOT NULL DEFAULT 0,
    "prevHash" TEXT NOT NULL DEFAULT '',
    "hash" TEXT NOT NULL,
    "payload" BLOB NOT NULL,
    "receivedAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- RedefineTables
PRAGMA defer_foreign_keys=ON;
PRAGMA foreign_keys=OFF;
CREATE TABLE "new_Agent" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "name" TEXT NOT NULL,
    "description" TEXT NOT NULL DEFAULT '',
    "enrolmentHash" TEXT,
    "enrolmentExpiresAt" DATETIME,
    "enrolledAt" DATETIME,
    "credentialHash" TEXT,
    "revokedAt" DATETIME,
    "version" TEXT NOT NULL DEFAULT '',
    "hostname" TEXT NOT NULL DEFAULT '',
    "connectedAt" DATETIME,
    "disconnectedAt" DATETIME,
    "lastSeenAt" DATETIME,
    "connectedTo" TEXT NOT NULL DEFAULT '',
    "bundleVersion" BIGINT NOT NULL DEFAULT 0,
    "auditSeq" BIGINT NOT NULL DEFAULT 0,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" DATETIME NOT NULL
);
INSERT INTO "new_Agent" ("bundleVersion", "connectedAt", "connectedTo", "createdAt", "credentialHash", "description", "disconnectedAt", "enrolledAt", "enrolmentExpiresAt", "enrolmentHash", "hostname", "id", "lastSeenAt", "name", "revokedAt", "updatedAt", "version") SELECT "bundleVersion", "connectedAt", "connectedTo", "createdAt", "credentialHash", "description", "disconnectedAt", "enrolledAt", "enrolmentExpiresAt", "enrolmentHash", "hostname", "id", "lastSeenAt", "name", "revokedAt", "updatedAt", "version" FROM "Agent";
DROP TABLE "Agent";
ALTER TABLE "new_Agent" RENAME TO "Agent";
PRAGMA foreign_keys=ON;
PRAGMA defer_foreign_keys=OFF;

-- CreateIndex
CREATE INDEX "AuditEvent_time_id_idx" ON "AuditEvent"("time", "id");

-- CreateIndex
CREATE INDEX "AuditEvent_user_time_idx" ON "AuditEvent"("user", "time");

-- CreateIndex
CREATE INDEX "AuditEvent_resource_time_idx" ON "AuditEvent"("resource", "time");

-- CreateIndex
CREATE INDEX "AuditEvent_type_time_idx" ON "AuditEvent"("type", "time");

-- CreateIndex
CREATE UNIQUE INDEX "AuditEvent_agentId_seq_key" ON "AuditEvent"("agentId", "seq");


-- Hand-kept (Prisma does not know it): redefining "Agent" above dropped the partial unique index.
CREATE UNIQUE INDEX "Agent_name_active_key" ON "Agent"("name") WHERE "revokedAt" IS NULL;
