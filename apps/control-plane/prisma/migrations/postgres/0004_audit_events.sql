-- AlterTable
ALTER TABLE "Agent" ADD COLUMN     "auditSeq" BIGINT NOT NULL DEFAULT 0;

-- CreateTable
CREATE TABLE "AuditEvent" (
    "id" TEXT NOT NULL,
    "agentId" TEXT NOT NULL,
    "seq" BIGINT NOT NULL,
    "time" TIMESTAMP(3) NOT NULL,
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
    "payload" BYTEA NOT NULL,
    "receivedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "AuditEvent_pkey" PRIMARY KEY ("id")
);

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

