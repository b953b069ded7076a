/** /api/v1/agents: create (with enrolment token), list, inspect, re-issue a token, delete (revoke). */
import { Type } from "@sinclair/typebox";
import type { FastifyPluginAsync } from "fastify";
import { auditAction, type HttpDeps } from "../app.js";
import { DateTime, errorResponses, IdParams, NullableDateTime } from "../schemas.js";

const Agent = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    description: Type.String(),
    state: Type.Union([Type.Literal("pending"), Type.Literal("connected"), Type.Literal("disconnected")]),
    connected: Type.Boolean(),
    enrolledAt: NullableDateTime,
    lastSeenAt: NullableDateTime,
    connectedAt: NullableDateTime,
    version: Type.String(),
    hostname: Type.String(),
    bundleVersion: Type.String({
      description:
        "Version of the policy bundle the agent enforces (0: none yet); issued per agent, strictly increasing",
    }),
    policyRevision: Type.String({
      description: "Policy revision that bundle was compiled from (0: none or not known yet)",
    }),
    bundleKeyId: Type.String({ description: "Bundle key that signed it (empty when not known yet)" }),
    bundleError: Type.String({
      description:
        "Why the agent's latest bundle was not delivered (over the size budget) or not applied (rejected by the agent); empty when fine",
    }),
    bundleErrorAt: NullableDateTime,
    connectedTo: Type.String({ description: "Control-plane replica holding the agent's stream" }),
    createdAt: DateTime,
  },
  { $id: "Agent" },
);

const CreateAgent = Type.Object(
  {
    name: Type.String({
      minLength: 1,
      maxLength: 63,
      pattern: "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
      description: "Lowercase letters, digits and dashes",
    }),
    description: Type.Optional(Type.String({ maxLength: 500 })),
  },
  { additionalProperties: false },
);

const EnrolmentToken = Type.Object({
  enrolmentToken: Type.String({ description: "One-time token; shown once" }),
  expiresAt: DateTime,
});

const admin = ["admin"] as const;
const readers = ["admin", "auditor"] as const;

export const agentRoutes: FastifyPluginAsync<{ deps: HttpDeps }> = async (app, { deps }) => {
  app.post(
    "/api/v1/agents",
    {
      config: { access: admin },
      schema: {
        summary: "Create an agent and its one-time enrolment token",
        tags: ["agents"],
        body: CreateAgent,
        response: { 201: Type.Object({ agent: Agent, ...EnrolmentToken.properties }), ...errorResponses },
      },
    },
    async (request, reply) => {
      const body = request.body as { name: string; description?: string };
      const created = await deps.agents.create(body);
      request.log.info(
        { agentId: created.agent.id, agentName: created.agent.name, by: request.principal?.user.id },
        "agent created",
      );
      await auditAction(deps, request, "agent.created", `agent ${created.agent.name} (${created.agent.id}) created`);
      return reply.status(201).send(created);
    },
  );

  app.get(
    "/api/v1/agents",
    {
      config: { access: readers },
      schema: {
        summary: "List agents with connection and bundle status",
        tags: ["agents"],
        response: { 200: Type.Object({ items: Type.Array(Agent) }), ...errorResponses },
      },
    },
    async () => ({ items: await deps.agents.list() }),
  );

  app.get(
    "/api/v1/agents/:id",
    {
      config: { access: readers },
      schema: { summary: "One agent", tags: ["agents"], params: IdParams, response: { 200: Agent, ...errorResponses } },
    },
    async (request) => deps.agents.get((request.params as IdParams).id),
  );

  app.post(
    "/api/v1/agents/:id/enrolment-token",
    {
      config: { access: admin },
      schema: {
        summary:
          "Issue a new enrolment token (the previous one stops working; using it replaces the agent's credential)",
        tags: ["agents"],
        params: IdParams,
        response: { 201: EnrolmentToken, ...errorResponses },
      },
    },
    async (request, reply) => {
      const { id } = request.params as IdParams;
      const token = await deps.agents.issueEnrolmentToken(id);
      request.log.info({ agentId: id, by: request.principal?.user.id }, "enrolment token issued");
      await auditAction(deps, request, "agent.enrolment_token_issued", `new enrolment token for agent ${id}`);
      return reply.status(201).send(token);
    },
  );

  app.delete(
    "/api/v1/agents/:id",
    {
      config: { access: admin },
      schema: {
        summary: "Revoke and remove an agent: its stream is cut and its credential stops working",
        tags: ["agents"],
        params: IdParams,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      const { id } = request.params as IdParams;
      await deps.agents.revoke(id);
      await auditAction(deps, request, "agent.revoked", `agent ${id} revoked`);
      request.log.info({ agentId: id, by: request.principal?.user.id }, "agent revoked");
      return reply.status(204).send();
    },
  );
};
