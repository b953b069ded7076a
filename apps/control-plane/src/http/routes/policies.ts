/**
 * /api/v1/policies: policy documents (CRUD, bulk apply with diff/prune/dry-run) and simulation.
 * Documents are validated by the policy package itself (one validator everywhere), so bodies are
 * declared as objects here and the errors point at document fields.
 */
import { Type } from "@sinclair/typebox";
import type { FastifyPluginAsync } from "fastify";
import { AppError } from "@moat/common";
import { RESOURCE_TYPES, type ResourceType } from "@moat/policy";
import { ROLES } from "../../store/index.js";
import { auditAction, principalOf, type HttpDeps } from "../app.js";
import { DateTime, errorResponses } from "../schemas.js";

const PolicyDocument = Type.Object(
  {},
  {
    additionalProperties: true,
    description: "A policy document (apiVersion moat.dev/v1, kind Policy); see docs/policy.md",
  },
);

const PolicyView = Type.Object(
  {
    name: Type.String(),
    revision: Type.String({ description: "Policy revision at which this document last changed" }),
    updatedBy: Type.String(),
    updatedAt: DateTime,
    document: PolicyDocument,
  },
  { $id: "Policy" },
);

const NameParams = Type.Object({ name: Type.String({ minLength: 1, maxLength: 63 }) }, { additionalProperties: false });

const ApplyBody = Type.Object(
  {
    documents: Type.Array(PolicyDocument, { maxItems: 1000 }),
    prune: Type.Boolean({ default: false, description: "Delete stored policies not in `documents`" }),
    dryRun: Type.Boolean({ default: false, description: "Report the diff without changing anything" }),
  },
  { additionalProperties: false },
);

const ApplyResult = Type.Object({
  dryRun: Type.Boolean(),
  revision: Type.String(),
  created: Type.Array(Type.String()),
  updated: Type.Array(Type.String()),
  unchanged: Type.Array(Type.String()),
  deleted: Type.Array(Type.String()),
});

const SimulateBody = Type.Object(
  {
    user: Type.String({ minLength: 1 }),
    groups: Type.Array(Type.String(), { default: [] }),
    serviceAccount: Type.Boolean({ default: false }),
    resource: Type.String({ minLength: 1 }),
    resourceType: Type.Optional(Type.String({ enum: [...RESOURCE_TYPES] })),
    labels: Type.Optional(Type.Record(Type.String(), Type.String())),
    action: Type.String({ minLength: 1 }),
    tables: Type.Optional(Type.Array(Type.String(), { maxItems: 1000 })),
    command: Type.Optional(Type.String()),
    sourceIp: Type.Optional(Type.String()),
    time: Type.Optional(Type.String({ format: "date-time" })),
    reason: Type.Optional(Type.String()),
  },
  { additionalProperties: false },
);

const Verdict = Type.Object({
  effect: Type.String({ enum: ["allow", "deny", "review"] }),
  rule: Type.String({ description: "Deciding rule (policy/rule); empty for the default deny" }),
  message: Type.String(),
  revision: Type.String(),
  obligations: Type.Object({}, { additionalProperties: true }),
  matched: Type.Array(Type.Object({ rule: Type.String(), effect: Type.String(), table: Type.Optional(Type.String()) })),
});

const editors = ["admin"] as const;
const readers = ["admin", "auditor", "reviewer"] as const;

export const policyRoutes: FastifyPluginAsync<{ deps: HttpDeps }> = async (app, { deps }) => {
  app.get(
    "/api/v1/policies",
    {
      config: { access: readers },
      schema: {
        summary: "List policies",
        tags: ["policies"],
        response: { 200: Type.Object({ items: Type.Array(PolicyView) }), ...errorResponses },
      },
    },
    async () => ({ items: await deps.policies.list() }),
  );

  app.get(
    "/api/v1/policies/:name",
    {
      config: { access: readers },
      schema: {
        summary: "One policy",
        tags: ["policies"],
        params: NameParams,
        response: { 200: PolicyView, ...errorResponses },
      },
    },
    async (request) => deps.policies.get((request.params as { name: string }).name),
  );

  app.put(
    "/api/v1/policies/:name",
    {
      config: { access: editors },
      schema: {
        summary: "Create or replace a policy",
        tags: ["policies"],
        params: NameParams,
        body: PolicyDocument,
        response: { 200: PolicyView, 201: PolicyView, ...errorResponses },
      },
    },
    async (request, reply) => {
      const { name } = request.params as { name: string };
      const body = request.body as { metadata?: { name?: unknown } };
      if (body.metadata?.name !== name) {
        throw new AppError("validation_failed", "metadata.name must equal the name in the URL", {
          fields: [{ field: "metadata.name", message: `must be "${name}"` }],
        });
      }
      const { view, created, changed } = await deps.policies.put(request.body, principalOf(request).user.email);
      if (changed)
        request.log.info({ policy: name, revision: view.revision, by: principalOf(request).user.id }, "policy changed");
      if (changed)
        await auditAction(
          deps,
          request,
          "policy.changed",
          `policy ${name} ${created ? "created" : "updated"} (revision ${view.revision})`,
        );
      return reply.status(created ? 201 : 200).send(view);
    },
  );

  app.delete(
    "/api/v1/policies/:name",
    {
      config: { access: editors },
      schema: {
        summary: "Delete a policy",
        tags: ["policies"],
        params: NameParams,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      const { name } = request.params as { name: string };
      await deps.policies.remove(name, principalOf(request).user.email);
      await auditAction(deps, request, "policy.changed", `policy ${name} deleted`);
      request.log.info({ policy: name, by: principalOf(request).user.id }, "policy deleted");
      return reply.status(204).send();
    },
  );

  app.post(
    "/api/v1/policies/apply",
    {
      config: { access: editors },
      schema: {
        summary: "Make the stored policies match a set of documents (idempotent; diff, prune, dry run)",
        tags: ["policies"],
        body: ApplyBody,
        response: { 200: ApplyResult, ...errorResponses },
      },
    },
    async (request) => {
      const body = request.body as { documents: unknown[]; prune: boolean; dryRun: boolean };
      const result = await deps.policies.apply(
        body.documents,
        { prune: body.prune, dryRun: body.dryRun },
        principalOf(request).user.email,
      );
      if (!body.dryRun && (result.created.length || result.updated.length || result.deleted.length)) {
        request.log.info({ ...result, by: principalOf(request).user.id }, "policies applied");
        await auditAction(
          deps,
          request,
          "policy.changed",
          `policies applied (revision ${result.revision}): created ${result.created.join(", ") || "-"}; updated ${result.updated.join(", ") || "-"}; deleted ${result.deleted.join(", ") || "-"}`,
        );
      }
      return result;
    },
  );

  app.post(
    "/api/v1/policies/simulate",
    {
      config: { access: ROLES },
      schema: {
        summary:
          "Would this request be allowed? Answers with the agents' own evaluator and the rules that matched. Members may simulate only themselves.",
        tags: ["policies"],
        body: SimulateBody,
        response: { 200: Verdict, ...errorResponses },
      },
    },
    async (request) => {
      const body = request.body as {
        user: string;
        groups: string[];
        serviceAccount: boolean;
        resource: string;
        resourceType?: ResourceType;
        labels?: Record<string, string>;
        action: string;
        tables?: string[];
        command?: string;
        sourceIp?: string;
        time?: string;
        reason?: string;
      };
      const principal = principalOf(request);
      if (principal.user.role === "member") {
        if (body.user.toLowerCase() !== principal.user.email.toLowerCase()) {
          throw new AppError("permission_denied", "members may simulate only their own access");
        }
        // ...as they are: their real groups and kind, not what the body claims.
        body.groups = principal.user.groups;
        body.serviceAccount = principal.user.kind === "service-account";
      }
      let resource: { name: string; type: ResourceType; labels: Record<string, string> };
      if (body.resourceType) resource = { name: body.resource, type: body.resourceType, labels: body.labels ?? {} };
      else {
        const known = await deps.store.resources.findByName(body.resource);
        if (!known)
          throw new AppError(
            "not_found",
            `no resource named "${body.resource}"; give resourceType (and labels) to simulate a hypothetical one`,
          );
        resource = { name: known.name, type: known.type, labels: { ...known.labels, ...body.labels } };
      }
      return deps.policies.simulate({
        user: body.user,
        groups: body.groups,
        serviceAccount: body.serviceAccount,
        resource,
        action: body.action,
        ...(body.tables ? { tables: body.tables } : {}),
        ...(body.command !== undefined ? { command: body.command } : {}),
        ...(body.sourceIp ? { sourceIp: body.sourceIp } : {}),
        ...(body.reason !== undefined ? { reason: body.reason } : {}),
        now: body.time ? Date.parse(body.time) : Date.now(),
      });
    },
  );
};
