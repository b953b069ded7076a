/**
 * The REST API: Fastify with TypeBox schemas and an OpenAPI document. External plugins first, then
 * ours (errors, auth, metrics), then routes. Every /api route must declare the roles it admits
 * (`config.roles`); the app refuses to start otherwise, so no route ships unauthorised.
 */
import swagger from "@fastify/swagger";
import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import { AppError } from "@moat/common";
import type { Logger } from "@moat/common";
import Fastify, { LogController } from "fastify";
import type { EventBus } from "../bus.js";
import type { ControlPlaneMetrics } from "../metrics.js";
import type { AgentService } from "../services/agents.js";
import type { PolicyService } from "../services/policies.js";
import type { TokenService } from "../services/tokens.js";
import type { OidcService } from "../services/oidc.js";
import type { AuditService } from "../services/audit.js";
import type { Keyring } from "../keys.js";
import type { IdentityService, Principal } from "../services/identity.js";
import type { Role, Store } from "../store/index.js";
import { problem, toAppError } from "./problem.js";
import { agentRoutes } from "./routes/agents.js";
import { healthRoutes } from "./routes/health.js";
import { metaRoutes } from "./routes/meta.js";
import { identityRoutes } from "./routes/identity.js";
import { keyRoutes } from "./routes/keys.js";
import { auditRoutes } from "./routes/audit.js";
import { policyRoutes } from "./routes/policies.js";
import { resourceRoutes } from "./routes/resources.js";

/** Who may call a route: roles, or "public" for unauthenticated probes and documents. */
export type RouteAccess = readonly Role[] | "public";

declare module "fastify" {
  interface FastifyContextConfig {
    access?: RouteAccess;
  }
  interface FastifyRequest {
    principal?: Principal;
  }
}

export interface HttpDeps {
  logger: Logger;
  store: Pick<Store, "ping" | "provider" | "resources" | "accessTokens" | "groups" | "signingKeys">;
  bus: Pick<EventBus, "publish">;
  identity: IdentityService;
  tokens: TokenService;
  keyring: Keyring;
  /** Present when an OpenID Connect issuer is configured. */
  oidc?: OidcService;
  audit: AuditService;
  agents: AgentService;
  policies: PolicyService;
  metrics: ControlPlaneMetrics;
  /** Whether the rest of the process (gRPC listener) is up; feeds /readyz. */
  isReady: () => boolean;
  version: string;
  replicaId: string;
  bodyLimitBytes?: number;
}

/**
 * Records a control-plane action in the audit trail. A failure to record is logged, never turned
 * into a failed request (the action has already happened).
 */
export async function auditAction(
  deps: Pick<HttpDeps, "audit">,
  request: { principal?: Principal; ip: string; log: { error(o: object, m: string): void } },
  type: string,
  message: string,
  actor?: string,
): Promise<void> {
  try {
    await deps.audit.recordControlPlane({
      type,
      actor: actor ?? request.principal?.user.email ?? "",
      message,
      sourceAddress: request.ip,
    });
  } catch (error) {
    request.log.error({ err: error, type }, "could not record a control-plane audit event");
  }
}

/** The principal of an authenticated request (routes with role access always have one). */
export function principalOf(request: { principal?: Principal }): Principal {
  if (!request.principal) throw new AppError("unauthenticated", "authentication required");
  return request.principal;
}

export async function buildHttpApp(deps: HttpDeps) {
  const app = Fastify({
    loggerInstance: deps.logger,
    // One access line per request from onResponse below, instead of Fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: deps.bodyLimitBytes ?? 1024 * 1024,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: "array", allErrors: true } },
    return503OnClosing: true,
  }).withTypeProvider<TypeBoxTypeProvider>();

  await app.register(swagger, {
    openapi: {
      openapi: "3.1.0",
      info: { title: "Moat control plane", version: deps.version, description: "Moat REST API" },
      components: {
        securitySchemes: { apiKey: { type: "http", scheme: "bearer", description: "A Moat API key (moat_ak_...)" } },
      },
      security: [{ apiKey: [] }],
    },
  });

  app.addHook("onRoute", (route) => {
    const access = route.config?.access;
    if (route.url.startsWith("/api/") && access === undefined) {
      throw new Error(`route ${route.method} ${route.url} declares no access roles`);
    }
  });

  app.addHook("onRequest", async (request) => {
    const access = request.routeOptions.config?.access;
    if (access === undefined || access === "public") return;
    const header = request.headers.authorization;
    const match = typeof header === "string" ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!match?.[1])
      throw new AppError("unauthenticated", "send an API key or access token as 'Authorization: Bearer <credential>'");
    const principal = await deps.identity.authenticate(match[1]);
    if (!access.includes(principal.user.role)) {
      throw new AppError("permission_denied", `this action requires one of the roles: ${access.join(", ")}`);
    }
    request.principal = principal;
  });

  app.addHook("onResponse", async (request, reply) => {
    const route = request.routeOptions.url ?? "unmatched";
    deps.metrics.httpRequests.labels(request.method, route, String(reply.statusCode)).observe(reply.elapsedTime / 1000);
    if (route.startsWith("/api/")) {
      request.log.info(
        {
          method: request.method,
          route,
          status: reply.statusCode,
          ms: Math.round(reply.elapsedTime),
          user: request.principal?.user.id,
        },
        "api request",
      );
    }
  });

  app.setErrorHandler(async (error, request, reply) => {
    const appError = toAppError(error);
    if (appError.code === "internal") {
      request.log.error({ err: error, url: request.url, method: request.method }, "request failed");
    } else {
      request.log.debug({ code: appError.code, url: request.url }, "request refused");
    }
    return reply.status(appError.httpStatus).type("application/problem+json").send(problem(appError, request.url));
  });

  app.setNotFoundHandler(async (request, reply) => {
    const error = new AppError("not_found", `no route ${request.method} ${request.url.split("?")[0]}`);
    return reply.status(404).type("application/problem+json").send(problem(error, request.url));
  });

  await app.register(healthRoutes, { deps });
  await app.register(metaRoutes, { deps });
  await app.register(agentRoutes, { deps });
  await app.register(resourceRoutes, { deps });
  await app.register(policyRoutes, { deps });
  await app.register(identityRoutes, { deps });
  await app.register(keyRoutes, { deps });
  await app.register(auditRoutes, { deps });
  return app;
}
