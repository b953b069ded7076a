/**
 * /api/v1/audit: search the audit trail (keyset pagination), its sessions, a streamed JSON Lines
 * export, and verification of an agent's hash chain. Auditors and admins only.
 */
import { Readable } from "node:stream";
import { Type } from "@sinclair/typebox";
import type { FastifyPluginAsync } from "fastify";
import type { HttpDeps } from "../app.js";
import type { AuditFilter } from "../../store/index.js";
import { DateTime, errorResponses, NullableDateTime } from "../schemas.js";

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

const Session = Type.Object(
  {
    sessionId: Type.String(),
    agentId: Type.String(),
    user: Type.String(),
    resource: Type.String(),
    startedAt: DateTime,
    endedAt: NullableDateTime,
    lastEventAt: DateTime,
    eventCount: Type.Integer(),
    statementCount: Type.Integer({ description: "db.query and ssh.exec events" }),
    deniedCount: Type.Integer(),
  },
  { $id: "AuditSession" },
);

/** The filters of /audit/events, shared by /audit/export. */
const filters = {
  agent: Type.Optional(Type.String()),
  user: Type.Optional(Type.String()),
  resource: Type.Optional(Type.String()),
  type: Type.Optional(Type.String()),
  verdict: Type.Optional(Type.String({ enum: ["allow", "deny", "review"] })),
  since: Type.Optional(Type.String({ format: "date-time" })),
  until: Type.Optional(Type.String({ format: "date-time" })),
  q: Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: "Text in the query, command or message" })),
};

const Query = Type.Object(
  {
    ...filters,
    limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
    cursor: Type.Optional(Type.String({ maxLength: 200 })),
    order: Type.String({
      enum: ["desc", "asc"],
      default: "desc",
      description: "desc: newest first; asc: oldest first (nextCursor continues in the same order)",
    }),
  },
  { additionalProperties: false },
);

const ExportQuery = Type.Object(filters, { additionalProperties: false });

const SessionsQuery = Type.Object(
  {
    agent: Type.Optional(Type.String()),
    user: Type.Optional(Type.String()),
    resource: Type.Optional(Type.String()),
    since: Type.Optional(
      Type.String({ format: "date-time", description: "Sessions with an event at or after this time" }),
    ),
    until: Type.Optional(Type.String({ format: "date-time", description: "Sessions started before this time" })),
    limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
    cursor: Type.Optional(Type.String({ maxLength: 400 })),
  },
  { additionalProperties: false },
);

interface FilterQuery {
  agent?: string;
  user?: string;
  resource?: string;
  type?: string;
  verdict?: string;
  since?: string;
  until?: string;
  q?: string;
}

function toFilter(q: FilterQuery): AuditFilter {
  return {
    ...(q.agent ? { agentId: q.agent } : {}),
    ...(q.user ? { user: q.user } : {}),
    ...(q.resource ? { resource: q.resource } : {}),
    ...(q.type ? { type: q.type } : {}),
    ...(q.verdict ? { verdict: q.verdict } : {}),
    ...(q.since ? { since: new Date(q.since) } : {}),
    ...(q.until ? { until: new Date(q.until) } : {}),
    ...(q.q ? { text: q.q } : {}),
  };
}

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
      const q = request.query as FilterQuery & { limit: number; cursor?: string; order: "asc" | "desc" };
      const cursor = q.cursor ? deps.audit.decodeCursor(q.cursor) : undefined;
      return deps.audit.search(
        { ...toFilter(q), ...(cursor ? (q.order === "asc" ? { after: cursor } : { before: cursor }) : {}) },
        q.limit,
        q.order,
      );
    },
  );

  app.get(
    "/api/v1/audit/follow",
    {
      config: { access: readers },
      schema: {
        summary:
          "Follow the trail as it is stored (moat audit tail -f): the events stored after cursor, each agent's in sequence order; without a cursor, none and a cursor at the end",
        description:
          "Unlike /audit/events (ordered by event time), an event stored late with an older time (an agent's spool draining after an outage) is not passed over. Poll with the returned cursor; filters apply to the items returned.",
        tags: ["audit"],
        querystring: Type.Object(
          {
            ...filters,
            limit: Type.Integer({ minimum: 1, maximum: 1000, default: 500 }),
            cursor: Type.Optional(Type.String({ maxLength: 16_384 })),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({ items: Type.Array(Event), cursor: Type.String() }),
          ...errorResponses,
        },
      },
    },
    async (request) => {
      const q = request.query as FilterQuery & { limit: number; cursor?: string };
      return deps.audit.follow(toFilter(q), q.limit, q.cursor);
    },
  );

  app.get(
    "/api/v1/audit/export",
    {
      config: { access: readers },
      schema: {
        summary: "Every matching event, oldest first, streamed as JSON Lines (one AuditEvent per line)",
        tags: ["audit"],
        querystring: ExportQuery,
        produces: ["application/x-ndjson"],
        response: {
          200: {
            description: "One AuditEvent (the /audit/events item) per line",
            content: { "application/x-ndjson": { schema: Event } },
          },
          ...errorResponses,
        },
      },
    },
    async (request, reply) => {
      const lines = deps.audit.exportLines(toFilter(request.query as FilterQuery));
      // The first page is read before answering, so a failing query is still a problem+json answer.
      const first = await lines.next();
      async function* body(): AsyncGenerator<string> {
        if (!first.done) yield first.value;
        yield* lines;
      }
      // One page in the readable buffer at most: the next page is read from the store only when the
      // socket has taken the previous one (pipe backpressure), however large the export.
      const stream = Readable.from(body(), { objectMode: true, highWaterMark: 1 });
      stream.on("error", (error) => request.log.error({ err: error }, "audit export failed while streaming"));
      return reply
        .header("content-type", "application/x-ndjson; charset=utf-8")
        .header("cache-control", "no-store")
        .send(stream);
    },
  );

  app.get(
    "/api/v1/audit/sessions",
    {
      config: { access: readers },
      schema: {
        summary: "Sessions in the audit trail, most recently started first (keyset pagination)",
        tags: ["audit"],
        querystring: SessionsQuery,
        response: {
          200: Type.Object({ items: Type.Array(Session), nextCursor: Type.Optional(Type.String()) }),
          ...errorResponses,
        },
      },
    },
    async (request) => {
      const q = request.query as {
        agent?: string;
        user?: string;
        resource?: string;
        since?: string;
        until?: string;
        limit: number;
        cursor?: string;
      };
      return deps.audit.sessions(
        {
          ...(q.agent ? { agentId: q.agent } : {}),
          ...(q.user ? { user: q.user } : {}),
          ...(q.resource ? { resource: q.resource } : {}),
          ...(q.since ? { since: new Date(q.since) } : {}),
          ...(q.until ? { until: new Date(q.until) } : {}),
        },
        q.limit,
        q.cursor,
      );
    },
  );

  app.get(
    "/api/v1/audit/sessions/:id",
    {
      config: { access: readers },
      schema: {
        summary: "A session and its events in order (keyset pagination: pass nextCursor as cursor)",
        tags: ["audit"],
        params: Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) }, { additionalProperties: false }),
        querystring: Type.Object(
          {
            agent: Type.Optional(
              Type.String({ description: "The agent, when several recorded a session with this id" }),
            ),
            limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
            cursor: Type.Optional(Type.String({ maxLength: 200 })),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({
            session: Session,
            items: Type.Array(Event),
            nextCursor: Type.Optional(Type.String()),
          }),
          ...errorResponses,
        },
      },
    },
    async (request) => {
      const q = request.query as { agent?: string; limit: number; cursor?: string };
      return deps.audit.session((request.params as { id: string }).id, {
        ...(q.agent ? { agentId: q.agent } : {}),
        limit: q.limit,
        ...(q.cursor ? { cursor: q.cursor } : {}),
      });
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
            horizon: Type.Optional(
              Type.Object(
                {
                  seq: Type.String({ description: "The last pruned event: the chain starts after it" }),
                  time: DateTime,
                  pruned: Type.String({ description: "Events of this chain pruned so far" }),
                },
                { description: "Present once retention pruned the start of the chain" },
              ),
            ),
          }),
          ...errorResponses,
        },
      },
    },
    async (request) => deps.audit.verify((request.query as { agent: string }).agent),
  );
};
