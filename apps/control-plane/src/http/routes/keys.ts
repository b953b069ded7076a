/** /api/v1/keys: the control plane's signing keys (public metadata only) and their rotation. */
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
  signing: Type.Boolean({
    description:
      "Whether this key signs now (bundle keys: the newest, for every agent that has acknowledged a bundle carrying it)",
  }),
});

const Rotated = Type.Object({
  kid: Type.String(),
  signsFrom: DateTime,
  retiresOthersAt: Type.Optional(DateTime),
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
        response: { 201: Rotated, ...errorResponses },
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

  app.post(
    "/api/v1/keys/bundle/rotate",
    {
      config: { access: ["admin"] },
      schema: {
        summary:
          "Rotate the bundle signing key: the new key is announced to every agent in a bundle signed by a key it trusts, then signs that agent's bundles once it has acknowledged it; older keys are retired after bundles.keyGraceSeconds",
        tags: ["keys"],
        response: { 201: Rotated, ...errorResponses },
      },
    },
    async (request, reply) => {
      const rotated = await deps.keyring.rotate("bundle");
      await deps.bus.publish("bundle.changed", { agentIds: "*" });
      await auditAction(
        deps,
        request,
        "key.rotated",
        `bundle signing key rotated: ${rotated.kid}; older bundle keys retire at ${rotated.retiresOthersAt.toISOString()}`,
      );
      request.log.info(
        { kid: rotated.kid, retiresOthersAt: rotated.retiresOthersAt, by: principalOf(request).user.id },
        "bundle signing key rotated",
      );
      return reply.status(201).send(rotated);
    },
  );
};
