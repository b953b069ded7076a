/** /openapi.json and /api/v1/whoami, /api/v1/status: what the API is and who is calling it. */
import { Type } from "@sinclair/typebox";
import type { FastifyPluginAsync } from "fastify";
import { ROLES } from "../../store/index.js";
import { principalOf, type HttpDeps } from "../app.js";
import { errorResponses } from "../schemas.js";

const Whoami = Type.Object({
  id: Type.String(),
  email: Type.String(),
  displayName: Type.String(),
  role: Type.String(),
  kind: Type.String({ enum: ["user", "service-account"] }),
  groups: Type.Array(Type.String()),
  apiKeyId: Type.Optional(Type.String()),
  tokenId: Type.Optional(Type.String()),
});

const Status = Type.Object({
  version: Type.String(),
  replica: Type.String(),
  store: Type.String(),
  agents: Type.Object({ total: Type.Integer(), connected: Type.Integer(), pending: Type.Integer() }),
  resources: Type.Integer(),
});

export const metaRoutes: FastifyPluginAsync<{ deps: HttpDeps }> = async (app, { deps }) => {
  app.get("/openapi.json", { config: { access: "public" }, schema: { hide: true } }, async () => app.swagger());

  app.get(
    "/api/v1/whoami",
    {
      config: { access: ROLES },
      schema: {
        summary: "The caller's identity and role",
        tags: ["meta"],
        response: { 200: Whoami, ...errorResponses },
      },
    },
    async (request) => {
      const { user, apiKeyId, tokenId } = principalOf(request);
      return {
        id: user.id,
        email: user.email,
        displayName: user.displayName,
        role: user.role,
        kind: user.kind,
        groups: user.groups,
        ...(apiKeyId ? { apiKeyId } : {}),
        ...(tokenId ? { tokenId } : {}),
      };
    },
  );

  app.get(
    "/api/v1/status",
    {
      config: { access: ROLES },
      schema: {
        summary: "Control-plane status and counts",
        tags: ["meta"],
        response: { 200: Status, ...errorResponses },
      },
    },
    async () => {
      const agents = await deps.agents.list();
      const resources = await deps.store.resources.list();
      return {
        version: deps.version,
        replica: deps.replicaId,
        store: deps.store.provider,
        agents: {
          total: agents.length,
          connected: agents.filter((a) => a.connected).length,
          pending: agents.filter((a) => a.state === "pending").length,
        },
        resources: resources.length,
      };
    },
  );
};
