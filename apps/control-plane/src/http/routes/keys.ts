/** /api/v1/keys: the control plane's signing keys (public metadata only) and token key rotation. */
import { Type } from "@sinclair/typebox";
import type { FastifyPluginAsync } from "fastify";
import { auditAction, principalOf, type HttpDeps } from "../app.js";
import { DateTime, errorResponses, NullableDateTime } from "../schemas.js";

const Key = Type.Object({
  kid: Type.String(),
  use: Type.String(),
  algorithm: Type.String(),
  createdAt: DateTime,
  retiredAt: NullableDateTime,
  signing: Type.Boolean({ description: "Whether this key signs now" }),
});

export const keyRoutes: FastifyPluginAsync<{ deps: HttpDeps }> = async (app, { deps }) => {
  app.get(
    "/api/v1/keys",
    {
      config: { access: ["admin", "auditor"] },
      schema: {
        summary: "Signing keys (no private material)",
        tags: ["keys"],
        response: { 200: Type.Object({ items: Type.Array(Key) }), ...errorResponses },
      },
    },
    async () => {
      const items = [];
      for (const use of ["token", "bundle"] as const) {
        const signing = (await deps.keyring.signer(use)).kid;
        for (const k of await deps.store.signingKeys.listAll(use)) {
          items.push({
            kid: k.id,
            use: k.use,
            algorithm: k.algorithm,
            createdAt: k.createdAt,
            retiredAt: k.retiredAt,
            signing: k.id === signing,
          });
        }
      }
      return { items };
    },
  );

  app.post(
    "/api/v1/keys/rotate",
    {
      config: { access: ["admin"] },
      schema: {
        summary:
          "Rotate the access-token signing key: the new key is published to agents at once and signs after a short delay; the old one stays until its tokens expire",
        tags: ["keys"],
        response: { 201: Type.Object({ kid: Type.String(), signsFrom: DateTime }), ...errorResponses },
      },
    },
    async (request, reply) => {
      const rotated = await deps.keyring.rotate("token");
      await deps.bus.publish("bundle.changed", { agentIds: "*" });
      await auditAction(deps, request, "key.rotated", `token signing key rotated: ${rotated.kid}`);
      request.log.info({ kid: rotated.kid, by: principalOf(request).user.id }, "token signing key rotated");
      return reply.status(201).send(rotated);
    },
  );
};
