/**
 * Identities over REST: password login, access tokens (issue, list, revoke), users, service
 * accounts, API keys, groups, single sign-on links. `:id` may be `me`. Members see and manage only
 * their own tokens and keys; admins manage everyone's; auditors read.
 */
import { Type } from "@sinclair/typebox";
import type { FastifyPluginAsync } from "fastify";
import { AppError, isAppError } from "@moat/common";
import { ROLES, type Role, type UserRecord } from "../../store/index.js";
import type { Principal } from "../../services/identity.js";
import { auditAction, principalOf, type HttpDeps } from "../app.js";
import { DateTime, errorResponses, NullableDateTime } from "../schemas.js";

const RoleSchema = Type.String({ enum: [...ROLES] });
const GroupName = Type.String({ pattern: "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$" });

const User = Type.Object(
  {
    id: Type.String(),
    email: Type.String(),
    displayName: Type.String(),
    role: Type.String(),
    kind: Type.String({ enum: ["user", "service-account"] }),
    groups: Type.Array(Type.String()),
    hasPassword: Type.Boolean(),
    disabled: Type.Boolean(),
    createdAt: DateTime,
    oidc: Type.Union([Type.Object({ issuer: Type.String(), subject: Type.String() }), Type.Null()], {
      description: "The identity-provider account (issuer and subject) single sign-on logs this user in as",
    }),
  },
  { $id: "User" },
);

const ApiKey = Type.Object({
  id: Type.String(),
  name: Type.String(),
  createdAt: DateTime,
  expiresAt: NullableDateTime,
  revokedAt: NullableDateTime,
  lastUsedAt: NullableDateTime,
});

const Token = Type.Object({
  accessToken: Type.String(),
  tokenType: Type.Literal("Bearer"),
  tokenId: Type.String(),
  expiresAt: DateTime,
});

const TokenInfo = Type.Object({
  id: Type.String(),
  userId: Type.String(),
  source: Type.String(),
  issuedAt: DateTime,
  expiresAt: DateTime,
  revokedAt: NullableDateTime,
});

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) }, { additionalProperties: false });

function userView(u: UserRecord) {
  return {
    id: u.id,
    email: u.email,
    displayName: u.displayName,
    role: u.role,
    kind: u.kind,
    groups: u.groups,
    hasPassword: u.hasPassword,
    disabled: u.disabledAt !== null,
    createdAt: u.createdAt,
    oidc: u.oidc,
  };
}

const staff = ["admin", "auditor"] as const;

/** Resolves `:id` ("me" or a user id) and checks the caller may act on it (self, or one of `others`). */
function target(principal: Principal, id: string, others: readonly Role[]): string {
  const resolved = id === "me" ? principal.user.id : id;
  if (resolved !== principal.user.id && !others.includes(principal.user.role)) {
    throw new AppError("permission_denied", "you may only act on your own account");
  }
  return resolved;
}

export const identityRoutes: FastifyPluginAsync<{ deps: HttpDeps }> = async (app, { deps }) => {
  const { identity, tokens } = deps;

  app.post(
    "/api/v1/auth/login",
    {
      config: { access: "public" },
      schema: {
        summary: "Log in with email and password; returns a short-lived access token",
        tags: ["auth"],
        security: [],
        body: Type.Object(
          {
            email: Type.String({ minLength: 3, maxLength: 320 }),
            password: Type.String({ minLength: 1, maxLength: 1024 }),
          },
          { additionalProperties: false },
        ),
        response: { 200: Token, ...errorResponses },
      },
    },
    async (request) => {
      const { email, password } = request.body as { email: string; password: string };
      let token;
      try {
        token = await identity.login(email, password);
      } catch (error) {
        await auditAction(
          deps,
          request,
          "auth.login_failed",
          `password login refused for ${email.toLowerCase().slice(0, 320)}`,
          email.toLowerCase().slice(0, 320),
        );
        throw error;
      }
      await auditAction(deps, request, "auth.login", `password login, token ${token.tokenId}`, email.toLowerCase());
      request.log.info({ user: email.toLowerCase(), tokenId: token.tokenId }, "password login");
      return token;
    },
  );

  app.get(
    "/api/v1/auth/oidc",
    {
      config: { access: "public" },
      schema: {
        summary: "The OpenID Connect issuer to log in with (for `moat login --sso`): endpoints, client id, scopes",
        tags: ["auth"],
        security: [],
        response: {
          200: Type.Object({
            issuer: Type.String(),
            clientId: Type.String(),
            scopes: Type.Array(Type.String()),
            authorizationEndpoint: Type.String(),
            tokenEndpoint: Type.String(),
            deviceAuthorizationEndpoint: Type.Optional(Type.String()),
          }),
          ...errorResponses,
        },
      },
    },
    async () => {
      if (!deps.oidc) throw new AppError("not_found", "single sign-on (OIDC) is not configured on this control plane");
      return deps.oidc.publicConfig();
    },
  );

  app.post(
    "/api/v1/auth/oidc/token",
    {
      config: { access: "public" },
      schema: {
        summary:
          "Exchange an ID token from the configured issuer for a Moat access token (users are created on first login, groups mapped from the groups claim)",
        tags: ["auth"],
        security: [],
        body: Type.Object(
          {
            idToken: Type.String({ minLength: 10, maxLength: 16384 }),
            nonce: Type.Optional(Type.String({ maxLength: 200 })),
          },
          { additionalProperties: false },
        ),
        response: { 200: Token, ...errorResponses },
      },
    },
    async (request) => {
      if (!deps.oidc) throw new AppError("not_found", "single sign-on (OIDC) is not configured on this control plane");
      const body = request.body as { idToken: string; nonce?: string };
      let login;
      try {
        login = await deps.oidc.exchange(body.idToken, body.nonce);
      } catch (error) {
        if (isAppError(error) && error.code === "identity_not_linked") {
          request.log.warn({ reason: error.message }, "single sign-on refused: identity not linked");
          await auditAction(deps, request, "auth.login_failed", `single sign-on refused: ${error.message}`);
        }
        throw error;
      }
      const { user } = login;
      if (login.created)
        await auditAction(
          deps,
          request,
          "user.created",
          `user ${user.email} created at their first single sign-on login (subject ${user.oidc?.subject})`,
          user.email,
        );
      if (login.previousEmail)
        await auditAction(
          deps,
          request,
          "user.changed",
          `user ${login.previousEmail} changed: email ${user.email} (from the identity provider)`,
          user.email,
        );
      if (login.emailNotFollowed)
        request.log.warn(
          { userId: user.id, email: user.email, identityProviderEmail: login.emailNotFollowed },
          "single sign-on: the identity provider's new email belongs to another user; the stored email is kept",
        );
      const token = await tokens.issue(user, "oidc", "api");
      await auditAction(deps, request, "auth.login", `single sign-on login, token ${token.tokenId}`, user.email);
      request.log.info({ user: user.email, tokenId: token.tokenId }, "OIDC login");
      return token;
    },
  );

  app.post(
    "/api/v1/tokens",
    {
      config: { access: ROLES },
      schema: {
        summary:
          "Issue an access token for agents (what you present to resources, e.g. as the Postgres password); REST refuses it",
        tags: ["auth"],
        response: { 201: Token, ...errorResponses },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      const token = await tokens.issue(principal.user, principal.apiKeyId ? "api-key" : "token", "agents");
      await auditAction(
        deps,
        request,
        "token.issued",
        `access token ${token.tokenId} for agents issued against ${principal.apiKeyId ? `API key ${principal.apiKeyId}` : `session token ${principal.tokenId}`}`,
      );
      request.log.info({ user: principal.user.id, tokenId: token.tokenId }, "access token issued");
      return reply.status(201).send(token);
    },
  );

  app.get(
    "/api/v1/tokens",
    {
      config: { access: ROLES },
      schema: {
        summary:
          "Access tokens of a user that have not expired yet, revoked ones included (default: the caller); others' only for admins and auditors",
        tags: ["auth"],
        querystring: Type.Object({ user: Type.Optional(Type.String()) }, { additionalProperties: false }),
        response: { 200: Type.Object({ items: Type.Array(TokenInfo) }), ...errorResponses },
      },
    },
    async (request) => {
      const { user } = request.query as { user?: string };
      const userId = target(principalOf(request), user ?? "me", staff);
      return { items: await deps.store.accessTokens.list({ userId }, new Date()) };
    },
  );

  app.delete(
    "/api/v1/tokens/:id",
    {
      config: { access: ROLES },
      schema: {
        summary: "Revoke an access token (own, or any for admins); agents refuse it within a second",
        tags: ["auth"],
        params: IdParams,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      const { id } = request.params as { id: string };
      const principal = principalOf(request);
      const record = await deps.store.accessTokens.findById(id);
      if (!record || (record.userId !== principal.user.id && principal.user.role !== "admin"))
        throw new AppError("not_found", `no token with id "${id}"`);
      await tokens.revoke(id);
      await auditAction(deps, request, "token.revoked", `access token ${id} revoked`);
      request.log.info({ tokenId: id, by: principal.user.id }, "access token revoked");
      return reply.status(204).send();
    },
  );

  app.get(
    "/api/v1/users",
    {
      config: { access: staff },
      schema: {
        summary: "List users and service accounts",
        tags: ["users"],
        response: { 200: Type.Object({ items: Type.Array(User) }), ...errorResponses },
      },
    },
    async () => ({ items: (await identity.listUsers()).map(userView) }),
  );

  app.post(
    "/api/v1/users",
    {
      config: { access: ["admin"] },
      schema: {
        summary: "Create a user (a person); with a password they can `moat login`",
        tags: ["users"],
        body: Type.Object(
          {
            email: Type.String({ format: "email", maxLength: 320 }),
            displayName: Type.Optional(Type.String({ maxLength: 200 })),
            role: RoleSchema,
            groups: Type.Optional(Type.Array(GroupName, { maxItems: 100 })),
            password: Type.Optional(Type.String({ maxLength: 1024 })),
          },
          { additionalProperties: false },
        ),
        response: { 201: User, ...errorResponses },
      },
    },
    async (request, reply) => {
      const body = request.body as {
        email: string;
        displayName?: string;
        role: Role;
        groups?: string[];
        password?: string;
      };
      const user = await identity.createUser(body);
      await auditAction(deps, request, "user.created", `user ${user.email} created with role ${user.role}`);
      request.log.info({ userId: user.id, role: user.role, by: principalOf(request).user.id }, "user created");
      return reply.status(201).send(userView(user));
    },
  );

  app.post(
    "/api/v1/service-accounts",
    {
      config: { access: ["admin"] },
      schema: {
        summary: "Create a service account (machines; authenticate with API keys)",
        tags: ["users"],
        body: Type.Object(
          {
            name: Type.String({ pattern: "^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$", maxLength: 63 }),
            role: Type.Optional(RoleSchema),
            groups: Type.Optional(Type.Array(GroupName, { maxItems: 100 })),
          },
          { additionalProperties: false },
        ),
        response: { 201: User, ...errorResponses },
      },
    },
    async (request, reply) => {
      const body = request.body as { name: string; role?: Role; groups?: string[] };
      const account = await identity.createServiceAccount(body);
      await auditAction(
        deps,
        request,
        "user.created",
        `service account ${account.email} created with role ${account.role}`,
      );
      request.log.info({ userId: account.id, by: principalOf(request).user.id }, "service account created");
      return reply.status(201).send(userView(account));
    },
  );

  app.get(
    "/api/v1/users/:id",
    {
      config: { access: ROLES },
      schema: {
        summary: "One user (`me` for the caller)",
        tags: ["users"],
        params: IdParams,
        response: { 200: User, ...errorResponses },
      },
    },
    async (request) =>
      userView(await identity.getUser(target(principalOf(request), (request.params as { id: string }).id, staff))),
  );

  app.patch(
    "/api/v1/users/:id",
    {
      config: { access: ["admin"] },
      schema: {
        summary: "Change a user: role, groups, password, or disable (revokes their tokens and reaches every agent)",
        tags: ["users"],
        params: IdParams,
        body: Type.Object(
          {
            displayName: Type.Optional(Type.String({ maxLength: 200 })),
            role: Type.Optional(RoleSchema),
            groups: Type.Optional(Type.Array(GroupName, { maxItems: 100 })),
            disabled: Type.Optional(Type.Boolean()),
            password: Type.Optional(Type.String({ maxLength: 1024 })),
          },
          { additionalProperties: false, minProperties: 1 },
        ),
        response: { 200: User, ...errorResponses },
      },
    },
    async (request) => {
      const principal = principalOf(request);
      const id = target(principal, (request.params as { id: string }).id, ["admin"]);
      const patch = request.body as {
        displayName?: string;
        role?: Role;
        groups?: string[];
        disabled?: boolean;
        password?: string;
      };
      if (id === principal.user.id && (patch.disabled === true || (patch.role && patch.role !== "admin"))) {
        throw new AppError("bad_request", "you cannot disable yourself or drop your own admin role");
      }
      const user = await identity.updateUser(id, patch);
      await auditAction(deps, request, "user.changed", `user ${user.email} changed: ${Object.keys(patch).join(", ")}`);
      request.log.info({ userId: id, fields: Object.keys(patch), by: principal.user.id }, "user changed");
      return userView(user);
    },
  );

  app.post(
    "/api/v1/users/:id/oidc-link",
    {
      config: { access: ["admin"] },
      schema: {
        summary:
          "Link a user to an identity-provider account (issuer and subject), so single sign-on as that account logs in as this user; users are never linked by email",
        tags: ["users"],
        params: IdParams,
        body: Type.Object(
          {
            subject: Type.String({ minLength: 1, maxLength: 255, description: "The account's `sub` claim" }),
            issuer: Type.Optional(
              Type.String({ minLength: 1, maxLength: 2048, description: "Default: the configured issuer" }),
            ),
          },
          { additionalProperties: false },
        ),
        response: { 200: User, ...errorResponses },
      },
    },
    async (request) => {
      const principal = principalOf(request);
      const id = target(principal, (request.params as { id: string }).id, ["admin"]);
      const body = request.body as { subject: string; issuer?: string };
      const issuer = body.issuer ?? deps.oidc?.issuer;
      if (!issuer) throw new AppError("bad_request", "single sign-on (OIDC) is not configured here: give the issuer");
      const user = await identity.linkOidc(id, { issuer, subject: body.subject });
      await auditAction(
        deps,
        request,
        "user.changed",
        `user ${user.email} linked to the identity-provider account ${body.subject} of ${issuer}`,
      );
      request.log.info({ userId: id, issuer, subject: body.subject, by: principal.user.id }, "user linked for SSO");
      return userView(user);
    },
  );

  app.delete(
    "/api/v1/users/:id/oidc-link",
    {
      config: { access: ["admin"] },
      schema: {
        summary: "Remove a user's single sign-on link (their access tokens are revoked)",
        tags: ["users"],
        params: IdParams,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      const id = target(principal, (request.params as { id: string }).id, ["admin"]);
      const before = await identity.getUser(id);
      const user = await identity.unlinkOidc(id);
      if (before.oidc) {
        await auditAction(
          deps,
          request,
          "user.changed",
          `user ${user.email} unlinked from the identity-provider account ${before.oidc.subject} of ${before.oidc.issuer}`,
        );
        request.log.info({ userId: id, by: principal.user.id }, "user unlinked from SSO");
      }
      return reply.status(204).send();
    },
  );

  app.get(
    "/api/v1/users/:id/api-keys",
    {
      config: { access: ROLES },
      schema: {
        summary: "API keys of a user (own, or anyone's for admins)",
        tags: ["users"],
        params: IdParams,
        response: { 200: Type.Object({ items: Type.Array(ApiKey) }), ...errorResponses },
      },
    },
    async (request) => {
      const userId = target(principalOf(request), (request.params as { id: string }).id, ["admin"]);
      return { items: (await identity.listApiKeys(userId)).map(({ hash: _hash, userId: _u, ...k }) => k) };
    },
  );

  app.post(
    "/api/v1/users/:id/api-keys",
    {
      config: { access: ROLES },
      schema: {
        summary: "Create an API key (shown once) for yourself, or for anyone as an admin",
        tags: ["users"],
        params: IdParams,
        body: Type.Object(
          {
            name: Type.String({ minLength: 1, maxLength: 100 }),
            expiresInDays: Type.Optional(Type.Integer({ minimum: 1, maximum: 3650 })),
          },
          { additionalProperties: false },
        ),
        response: {
          201: Type.Object({ key: ApiKey, apiKey: Type.String({ description: "Shown once" }) }),
          ...errorResponses,
        },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      const userId = target(principal, (request.params as { id: string }).id, ["admin"]);
      const body = request.body as { name: string; expiresInDays?: number };
      const { key, value } = await identity.createApiKey(userId, body.name, body.expiresInDays);
      await auditAction(
        deps,
        request,
        "api_key.created",
        `API key ${key.id} (${body.name}) created for user ${userId}`,
      );
      request.log.info({ keyId: key.id, userId, by: principal.user.id }, "API key created");
      const { hash: _hash, userId: _u, ...view } = key;
      return reply.status(201).send({ key: view, apiKey: value });
    },
  );

  app.delete(
    "/api/v1/api-keys/:id",
    {
      config: { access: ROLES },
      schema: {
        summary: "Revoke an API key (own, or any for admins)",
        tags: ["users"],
        params: IdParams,
        response: { 204: Type.Null(), ...errorResponses },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      await identity.revokeApiKey((request.params as { id: string }).id, principal.user);
      await auditAction(deps, request, "api_key.revoked", `API key ${(request.params as { id: string }).id} revoked`);
      request.log.info({ keyId: (request.params as { id: string }).id, by: principal.user.id }, "API key revoked");
      return reply.status(204).send();
    },
  );

  app.get(
    "/api/v1/groups",
    {
      config: { access: ["admin", "auditor", "reviewer"] },
      schema: {
        summary: "Groups and their member counts",
        tags: ["users"],
        response: {
          200: Type.Object({
            items: Type.Array(
              Type.Object({ name: Type.String(), description: Type.String(), members: Type.Integer() }),
            ),
          }),
          ...errorResponses,
        },
      },
    },
    async () => ({
      items: (await deps.store.groups.list()).map((g) => ({
        name: g.name,
        description: g.description,
        members: g._count.members,
      })),
    }),
  );
};
