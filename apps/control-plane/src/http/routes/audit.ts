/** /api/v1/audit: search the audit trail (keyset pagination) and verify an agent's hash chain. */
import { Type } from "@sinclair/typebox";
import type { FastifyPluginAsync } from "fastify";
import type { HttpDeps } from "../app.js";
import { DateTime, errorResponses } from "../schemas.js";

const readers = ["admin", "auditor"] as const;

const Event = Type.Object(
  {
    id: Type.String(),
    agentId: Type.String(),
    seq: Type.String(),
    time: DateTime,
    type: Type.String(),
    user: Type.String(),
    resource: Type.String(),
    sessionId: Type.String(),
    verdict: Type.String(),
    rule: Type.String(),
    message: Type.String(),
    bundleVersion: Type.String(),
    detail: Type.Union([Type.Object({}, { additionalProperties: true }), Type.Null()]),
  },
  { $id: "AuditEvent" },
);

const Query = Type.Object(
  {
    agent: Type.Optional(Type.String()),
    user: Type.Optional(Type.String()),
    resource: Type.Optional(Type.String()),
    type: Type.Optional(Type.String()),
    verdict: Type.Optional(Type.String({ enum: ["allow", "deny", "review"] })),
    since: Type.Optional(Type.String({ format: "date-time" })),
    until: Type.Optional(Type.String({ format: "date-time" })),
    q: Type.Optional(
      Type.String({ minLength: 1, maxLength: 200, description: "Text in the query, command or message" }),
    ),
    limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
    cursor: Type.Optional(Type.String({ maxLength: 200 })),
  },
  { additionalProperties: false },
);

export const auditRoutes: FastifyPluginAsync<{ deps: HttpDeps }> = async (app, { deps }) => {
  app.get(
    "/api/v1/audit/events",
    {
      config: { access: readers },
      schema: {
        summary: "Search audit events, newest first (keyset pagination: pass nextCursor as cursor)",
        tags: ["audit"],
        querystring: Query,
        response: {
          200: Type.Object({ items: Type.Array(Event), nextCursor: Type.Optional(Type.String()) }),
          ...errorResponses,
        },
      },
    },
    async (request) => {
      const q = request.query as {
        agent?: string;
        user?: string;
        resource?: string;
        type?: string;
        verdict?: string;
        since?: string;
        until?: string;
        q?: string;
        limit: number;
        cursor?: string;
      };
      return deps.audit.search(
        {
          ...(q.agent ? { agentId: q.agent } : {}),
          ...(q.user ? { user: q.user } : {}),
          ...(q.resource ? { resource: q.resource } : {}),
          ...(q.type ? { type: q.type } : {}),
          ...(q.verdict ? { verdict: q.verdict } : {}),
          ...(q.since ? { since: new Date(q.since) } : {}),
          ...(q.until ? { until: new Date(q.until) } : {}),
          ...(q.q ? { text: q.q } : {}),
          ...(q.cursor ? { before: deps.audit.decodeCursor(q.cursor) } : {}),
        },
        q.limit,
      );
    },
  );

  app.get(
    "/api/v1/audit/verify",
    {
      config: { access: readers },
      schema: {
        summary: "Recompute an agent's hash chain over its stored events and report the first break",
        tags: ["audit"],
        querystring: Type.Object({ agent: Type.String({ minLength: 1 }) }, { additionalProperties: false }),
        response: {
          200: Type.Object({
            agentId: Type.String(),
            checked: Type.Integer(),
            ok: Type.Boolean(),
            firstBreak: Type.Optional(
              Type.Object({ seq: Type.String(), id: Type.Optional(Type.String()), problem: Type.String() }),
            ),
          }),
          ...errorResponses,
        },
      },
    },
    async (request) => deps.audit.verify((request.query as { agent: string }).agent),
  );
};
