/** Probes: /healthz (the process answers), /readyz (store reachable, gRPC up), /metrics (Prometheus). */
import type { FastifyPluginAsync } from "fastify";
import type { HttpDeps } from "../app.js";

export const healthRoutes: FastifyPluginAsync<{ deps: HttpDeps }> = async (app, { deps }) => {
  const hidden = { hide: true } as const;
  app.get("/healthz", { config: { access: "public" }, schema: hidden }, async () => ({ status: "ok" }));

  app.get("/readyz", { config: { access: "public" }, schema: hidden }, async (_request, reply) => {
    const checks: Record<string, string> = {};
    try {
      await deps.store.ping();
      checks.store = "ok";
    } catch {
      checks.store = "unreachable";
    }
    checks.grpc = deps.isReady() ? "ok" : "starting";
    const ready = Object.values(checks).every((v) => v === "ok");
    return reply.status(ready ? 200 : 503).send({ status: ready ? "ready" : "not ready", checks });
  });

  app.get("/metrics", { config: { access: "public" }, schema: hidden }, async (_request, reply) => {
    const body = await deps.metrics.registry.metrics();
    return reply.type(deps.metrics.registry.contentType).send(body);
  });
};
