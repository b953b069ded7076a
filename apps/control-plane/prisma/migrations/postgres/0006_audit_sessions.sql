-- CreateTable
CREATE TABLE "AuditSession" (
    "agentId" TEXT NOT NULL,
    "sessionId" TEXT NOT NULL,
    "user" TEXT NOT NULL DEFAULT '',
    "resource" TEXT NOT NULL DEFAULT '',
    "startedAt" TIMESTAMP(3) NOT NULL,
    "endedAt" TIMESTAMP(3),
    "lastEventAt" TIMESTAMP(3) NOT NULL,
    "eventCount" INTEGER NOT NULL DEFAULT 0,
    "statementCount" INTEGER NOT NULL DEFAULT 0,
    "deniedCount" INTEGER NOT NULL DEFAULT 0,

    CONSTRAINT "AuditSession_pkey" PRIMARY KEY ("agentId","sessionId")
);

-- CreateTable
CREATE TABLE "AuditHorizon" (
    "agentId" TEXT NOT NULL,
    "seq" BIGINT NOT NULL,
    "hash" TEXT NOT NULL,
    "time" TIMESTAMP(3) NOT NULL,
    "pruned" BIGINT NOT NULL DEFAULT 0,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "AuditHorizon_pkey" PRIMARY KEY ("agentId")
);

-- CreateIndex
CREATE INDEX "AuditSession_startedAt_sessionId_idx" ON "AuditSession"("startedAt", "sessionId");

-- CreateIndex
CREATE INDEX "AuditSession_agentId_startedAt_idx" ON "AuditSession"("agentId", "startedAt");

-- CreateIndex
CREATE INDEX "AuditSession_user_startedAt_idx" ON "AuditSession"("user", "startedAt");

-- CreateIndex
CREATE INDEX "AuditSession_resource_startedAt_idx" ON "AuditSession"("resource", "startedAt");

-- CreateIndex
CREATE INDEX "AuditSession_sessionId_idx" ON "AuditSession"("sessionId");

-- CreateIndex
CREATE INDEX "AuditEvent_sessionId_seq_idx" ON "AuditEvent"("sessionId", "seq");

-- Hand-kept (Prisma does not know it): summaries of the sessions whose events are already stored.
INSERT INTO "AuditSession" ("agentId", "sessionId", "user", "resource", "startedAt", "endedAt", "lastEventAt", "eventCount", "statementCount", "deniedCount")
SELECT "agentId", "sessionId", MAX("user"), MAX("resource"), MIN("time"),
       MAX(CASE WHEN "type" = 'session.end' THEN "time" END), MAX("time"), COUNT(*),
       SUM(CASE WHEN "type" IN ('db.query', 'ssh.exec') THEN 1 ELSE 0 END),
       SUM(CASE WHEN "verdict" = 'deny' THEN 1 ELSE 0 END)
FROM "AuditEvent" WHERE "sessionId" <> '' GROUP BY "agentId", "sessionId";
