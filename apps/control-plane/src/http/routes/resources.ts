/** /api/v1/resources: what the agents announce they protect (no secrets: those stay on the agents). */
import { Type } from "@sinclair/typebox";
import type { FastifyPluginAsync } from "fastify";
import { ROLES } from "../../store/index.js";
import type { HttpDeps } from "../app.js";
import { DateTime, errorResponses } from "../schemas.js";

const ResourceType = Type.Union([
  Type.Literal("postgres"),
  Type.Literal("ssh"),
  Type.Literal("kubernetes"),
  Type.Literal("http"),
]);

const Resource = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    type: ResourceType,
    labels: Type.Record(Type.String(), Type.String()),
    listenAddress: Type.String(),
    description: Type.String(),
    agentId: Type.String(),
    agentName: Type.String(),
    updatedAt: DateTime,
  },
  { $id: "Resource" },
);

const Query = Type.Object(
  {
    type: Type.Optional(ResourceType),
    agent: Type.Optional(Type.String({ description: "Agent id" })),
  },
  { additionalProperties: false },
);

export const resourceRoutes: FastifyPluginAsync<{ deps: HttpDeps }> = async (app, { deps }) => {
  app.get(
    "/api/v1/resources",
    {
      config: { access: ROLES },
      schema: {
        summary: "List the resources agents announce",
        tags: ["resources"],
        querystring: Query,
        response: { 200: Type.Object({ items: Type.Array(Resource) }), ...errorResponses },
      },
    },
    async (request) => {
      const query = request.query as { type?: "postgres" | "ssh" | "kubernetes" | "http"; agent?: string };
      const [resources, agents] = await Promise.all([
        deps.store.resources.list({
          ...(query.type ? { type: query.type } : {}),
          ...(query.agent ? { agentId: query.agent } : {}),
        }),
        deps.agents.list(),
      ]);
      const names = new Map(agents.map((a) => [a.id, a.name]));
      return { items: resources.map((r) => ({ ...r, agentName: names.get(r.agentId) ?? "" })) };
    },
  );
};
