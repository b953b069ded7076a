/**
 * Repositories over the Prisma client: each method is one small, named query returning domain
 * records. Unique-constraint violations become AppError "conflict".
 */
import { AppError } from "@moat/common";
import type { PrismaClient } from "./generated/sqlite/client.js";

/**
 * How long after it expires a revoked token is still listed in bundles: a database session started
 * with a token outlives it, and the agent ends the sessions of the tokens a bundle lists as revoked
 * (review 63: a token revoked, or a user's groups changed, more than two minutes after the token
 * expired left its sessions running). A session older than this past its token's expiry is
 * reached by disabling the user or by a policy that no longer lets it connect.
 */
export const REVOKED_TOKENS_KEPT_MS = 24 * 3600_000;

export const ROLES = ["admin", "auditor", "reviewer", "member"] as const;
export type Role = (typeof ROLES)[number];

export type UserKind = "user" | "service-account";

export interface UserRecord {
  id: string;
  email: string;
  displayName: string;
  role: Role;
  kind: UserKind;
  groups: string[];
  hasPassword: boolean;
  disabledAt: Date | null;
  createdAt: Date;
  /** The single sign-on identity this user logs in as (issuer and subject), if bound. */
  oidc: OidcBinding | null;
}

/** An identity provider's account: its issuer and the subject (`sub`) it gives the account. */
export interface OidcBinding {
  issuer: string;
  subject: string;
}

export interface AccessTokenRecord {
  id: string;
  userId: string;
  source: string;
  issuedAt: Date;
  expiresAt: Date;
  revokedAt: Date | null;
}

export interface ApiKeyRecord {
  id: string;
  name: string;
  hash: string;
  userId: string;
  createdAt: Date;
  expiresAt: Date | null;
  revokedAt: Date | null;
  lastUsedAt: Date | null;
}

export interface AuditEventRow {
  id: string;
  agentId: string;
  seq: bigint;
  time: Date;
  type: string;
  user: string;
  resource: string;
  sessionId: string;
  verdict: string;
  rule: string;
  text: string;
  bundleVersion: bigint;
  prevHash: string;
  hash: string;
  payload: Uint8Array;
}

/** The pseudo-agent id under which the control plane's own actions are chained. */
export const CONTROL_PLANE_AGENT_ID = "control-plane";

export interface AuditFilter {
  agentId?: string;
  user?: string;
  resource?: string;
  type?: string;
  verdict?: string;
  since?: Date;
  until?: Date;
  /** Substring of the query text / command / message. */
  text?: string;
  /** Keyset cursor: events strictly older than (time, id). */
  before?: { time: Date; id: string };
  /** Keyset cursor for oldest-first order: events strictly newer than (time, id). */
  after?: { time: Date; id: string };
}

export interface AgentRecord {
  id: string;
  name: string;
  description: string;
  enrolmentHash: string | null;
  enrolmentExpiresAt: Date | null;
  enrolledAt: Date | null;
  credentialHash: string | null;
  revokedAt: Date | null;
  version: string;
  hostname: string;
  connectedAt: Date | null;
  disconnectedAt: Date | null;
  lastSeenAt: Date | null;
  connectedTo: string;
  bundleVersion: bigint;
  /** Last bundle version issued to the agent (store-issued, strictly increasing). */
  bundleSeq: bigint;
  /** Policy revision of the bundle the agent enforces, as it acknowledged it (0: unknown or none). */
  policyRevision: bigint;
  /** Key that signed the bundle the agent enforces ("" when unknown). */
  bundleKeyId: string;
  /** Why the agent's latest bundle was not delivered or not applied ("" when fine). */
  bundleError: string;
  bundleErrorVersion: bigint;
  bundleErrorAt: Date | null;
  auditSeq: bigint;
  createdAt: Date;
}

export type ResourceType = "postgres" | "ssh" | "kubernetes" | "http";

export interface PolicyRecord {
  id: string;
  name: string;
  document: string;
  revision: bigint;
  updatedBy: string;
  createdAt: Date;
  updatedAt: Date;
}

export interface SigningKeyRecord {
  id: string;
  use: string;
  algorithm: string;
  publicJwk: string;
  privateKeyEnc: string;
  createdAt: Date;
  retiredAt: Date | null;
}

export interface ResourceRecord {
  id: string;
  name: string;
  type: ResourceType;
  labels: Record<string, string>;
  listenAddress: string;
  description: string;
  agentId: string;
  createdAt: Date;
  updatedAt: Date;
}

export interface ResourceInput {
  name: string;
  type: ResourceType;
  labels: Record<string, string>;
  listenAddress: string;
  description: string;
}

function isUniqueViolation(error: unknown): boolean {
  return typeof error === "object" && error !== null && (error as { code?: unknown }).code === "P2002";
}

async function mapConflict<T>(message: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (isUniqueViolation(error)) throw new AppError("conflict", message, { cause: error });
    throw error;
  }
}

type ResourceRow = Omit<ResourceRecord, "labels" | "type"> & { labels: string; type: string };

function toResource(row: ResourceRow): ResourceRecord {
  return { ...row, type: row.type as ResourceType, labels: JSON.parse(row.labels) as Record<string, string> };
}

type UserRow = {
  id: string;
  email: string;
  displayName: string;
  role: string;
  kind: string;
  passwordHash: string | null;
  disabledAt: Date | null;
  createdAt: Date;
  oidcIssuer: string | null;
  oidcSubject: string | null;
  groups?: { group: string }[];
};

function toUser(row: UserRow): UserRecord {
  return {
    id: row.id,
    email: row.email,
    displayName: row.displayName,
    role: row.role as Role,
    kind: row.kind as UserKind,
    groups: (row.groups ?? []).map((g) => g.group).sort(),
    hasPassword: row.passwordHash !== null,
    disabledAt: row.disabledAt,
    createdAt: row.createdAt,
    oidc:
      row.oidcIssuer !== null && row.oidcSubject !== null ? { issuer: row.oidcIssuer, subject: row.oidcSubject } : null,
  };
}

export function createRepositories(db: PrismaClient) {
  const withGroups = { groups: { select: { group: true } } } as const;

  const users = {
    count: () => db.user.count(),
    findById: async (id: string) => {
      const row = await db.user.findUnique({ where: { id }, include: withGroups });
      return row ? toUser(row) : undefined;
    },
    findByEmail: async (email: string) => {
      const row = await db.user.findUnique({ where: { email }, include: withGroups });
      return row ? toUser(row) : undefined;
    },
    /** The user bound to an identity provider's account (issuer and subject), if any. */
    findByOidc: async (binding: OidcBinding) => {
      const row = await db.user.findUnique({
        where: { oidcIssuer_oidcSubject: { oidcIssuer: binding.issuer, oidcSubject: binding.subject } },
        include: withGroups,
      });
      return row ? toUser(row) : undefined;
    },
    list: async (filter: { kind?: UserKind } = {}) =>
      (await db.user.findMany({ where: filter, include: withGroups, orderBy: { email: "asc" } })).map(toUser),
    /** Password hash of a user, for login only. */
    passwordHashOf: async (id: string): Promise<string | null> =>
      (await db.user.findUnique({ where: { id }, select: { passwordHash: true } }))?.passwordHash ?? null,
    create: (input: {
      id: string;
      email: string;
      displayName: string;
      role: Role;
      kind?: UserKind;
      groups?: string[];
      passwordHash?: string | null;
      oidc?: OidcBinding;
    }) =>
      mapConflict(`a user or service account named ${input.email} already exists`, async () =>
        db.$transaction(async (tx) => {
          for (const name of input.groups ?? [])
            await tx.group.upsert({ where: { name }, create: { name }, update: {} });
          const row = await tx.user.create({
            data: {
              id: input.id,
              email: input.email,
              displayName: input.displayName,
              role: input.role,
              kind: input.kind ?? "user",
              passwordHash: input.passwordHash ?? null,
              oidcIssuer: input.oidc?.issuer ?? null,
              oidcSubject: input.oidc?.subject ?? null,
              groups: { create: (input.groups ?? []).map((group) => ({ group })) },
            },
            include: withGroups,
          });
          return toUser(row);
        }),
      ),
    update: async (
      id: string,
      patch: {
        displayName?: string;
        role?: Role;
        disabled?: boolean;
        passwordHash?: string | null;
        groups?: string[];
        email?: string;
        /** A binding to set, or null to remove it. */
        oidc?: OidcBinding | null;
      },
      at: Date,
    ): Promise<UserRecord> =>
      mapConflict("another user already has this email or single sign-on identity", () =>
        db.$transaction(async (tx) => {
          if (patch.groups) {
            for (const name of patch.groups) await tx.group.upsert({ where: { name }, create: { name }, update: {} });
            await tx.userGroup.deleteMany({ where: { userId: id } });
            await tx.userGroup.createMany({ data: patch.groups.map((group) => ({ userId: id, group })) });
          }
          const row = await tx.user.update({
            where: { id },
            data: {
              ...(patch.displayName !== undefined ? { displayName: patch.displayName } : {}),
              ...(patch.role !== undefined ? { role: patch.role } : {}),
              ...(patch.disabled !== undefined ? { disabledAt: patch.disabled ? at : null } : {}),
              ...(patch.passwordHash !== undefined ? { passwordHash: patch.passwordHash } : {}),
              ...(patch.email !== undefined ? { email: patch.email } : {}),
              ...(patch.oidc !== undefined
                ? { oidcIssuer: patch.oidc?.issuer ?? null, oidcSubject: patch.oidc?.subject ?? null }
                : {}),
            },
            include: withGroups,
          });
          return toUser(row);
        }),
      ),
    /** Emails (lower case) of disabled users and service accounts, for bundles. */
    disabledEmails: async (): Promise<string[]> =>
      (await db.user.findMany({ where: { NOT: { disabledAt: null } }, select: { email: true } })).map((u) =>
        u.email.toLowerCase(),
      ),
  };

  const groups = {
    list: () => db.group.findMany({ orderBy: { name: "asc" }, include: { _count: { select: { members: true } } } }),
  };

  const accessTokens = {
    create: (input: Omit<AccessTokenRecord, "revokedAt">) => db.accessToken.create({ data: input }),
    findById: async (id: string): Promise<AccessTokenRecord | undefined> =>
      (await db.accessToken.findUnique({ where: { id } })) ?? undefined,
    list: (filter: { userId?: string }, at: Date): Promise<AccessTokenRecord[]> =>
      db.accessToken.findMany({
        where: { ...filter, expiresAt: { gt: at } },
        orderBy: { issuedAt: "desc" },
        take: 1000,
      }),
    revoke: (id: string, at: Date) =>
      db.accessToken.updateMany({ where: { id, revokedAt: null }, data: { revokedAt: at } }),
    /** Revokes a user's tokens, those expired less than REVOKED_TOKENS_KEPT_MS ago too (their sessions may live). */
    revokeAllOf: (userId: string, at: Date) =>
      db.accessToken.updateMany({
        where: { userId, revokedAt: null, expiresAt: { gt: new Date(at.getTime() - REVOKED_TOKENS_KEPT_MS) } },
        data: { revokedAt: at },
      }),
    /** Ids of revoked tokens expiring after `at` (what agents must refuse, and whose sessions they end). */
    revokedUnexpired: async (at: Date): Promise<string[]> =>
      (
        await db.accessToken.findMany({
          where: { NOT: { revokedAt: null }, expiresAt: { gt: at } },
          select: { id: true },
        })
      ).map((t) => t.id),
    deleteExpired: (before: Date) => db.accessToken.deleteMany({ where: { expiresAt: { lt: before } } }),
  };

  const apiKeys = {
    findById: async (id: string): Promise<ApiKeyRecord | undefined> =>
      (await db.apiKey.findUnique({ where: { id } })) ?? undefined,
    listForUser: (userId: string): Promise<ApiKeyRecord[]> =>
      db.apiKey.findMany({ where: { userId }, orderBy: { createdAt: "asc" } }),
    revoke: (id: string, at: Date) => db.apiKey.updateMany({ where: { id, revokedAt: null }, data: { revokedAt: at } }),
    create: (input: { id: string; name: string; hash: string; userId: string; expiresAt?: Date | null }) =>
      db.apiKey.create({ data: { ...input, expiresAt: input.expiresAt ?? null } }),
    touch: (id: string, at: Date) => db.apiKey.update({ where: { id }, data: { lastUsedAt: at } }),
  };

  const agents = {
    findById: async (id: string): Promise<AgentRecord | undefined> =>
      (await db.agent.findUnique({ where: { id } })) ?? undefined,
    findActiveByName: async (name: string): Promise<AgentRecord | undefined> =>
      (await db.agent.findFirst({ where: { name, revokedAt: null } })) ?? undefined,
    listActive: (): Promise<AgentRecord[]> =>
      db.agent.findMany({ where: { revokedAt: null }, orderBy: { name: "asc" } }),
    create: (input: {
      id: string;
      name: string;
      description: string;
      enrolmentHash: string;
      enrolmentExpiresAt: Date;
    }) => mapConflict(`an agent named "${input.name}" already exists`, () => db.agent.create({ data: input })),
    /** Replaces the pending enrolment secret (a new token for an agent that has not enrolled or must re-enrol). */
    setEnrolment: (id: string, enrolmentHash: string, enrolmentExpiresAt: Date) =>
      db.agent.update({ where: { id }, data: { enrolmentHash, enrolmentExpiresAt } }),
    /**
     * Consumes the enrolment secret and stores the credential hash, only if the secret is still the
     * pending one (compare-and-swap, so two concurrent uses of one token cannot both succeed).
     */
    completeEnrolment: async (
      id: string,
      expectedEnrolmentHash: string,
      credentialHash: string,
      details: { version: string; hostname: string },
      at: Date,
    ): Promise<boolean> => {
      const result = await db.agent.updateMany({
        where: { id, enrolmentHash: expectedEnrolmentHash, revokedAt: null },
        data: { enrolmentHash: null, enrolmentExpiresAt: null, credentialHash, enrolledAt: at, ...details },
      });
      return result.count === 1;
    },
    /**
     * Records a new stream. The bundle the agent reports becomes the one it enforces (its policy
     * revision and key unknown until it acknowledges a bundle, unless it is the one on record), and
     * the agent's bundle sequence is raised to it, so the next bundle issued is newer whatever the
     * store's history (a restored backup, say).
     */
    markConnected: async (
      id: string,
      details: { version: string; hostname: string; connectedTo: string; bundleVersion: bigint },
      at: Date,
    ): Promise<void> => {
      await db.$transaction(async (tx) => {
        const known = await tx.agent.findUnique({ where: { id }, select: { bundleVersion: true } });
        await tx.agent.update({
          where: { id },
          data: {
            ...details,
            ...(known?.bundleVersion === details.bundleVersion ? {} : { policyRevision: 0n, bundleKeyId: "" }),
            connectedAt: at,
            lastSeenAt: at,
            disconnectedAt: null,
          },
        });
        await tx.agent.updateMany({
          where: { id, bundleSeq: { lt: details.bundleVersion } },
          data: { bundleSeq: details.bundleVersion },
        });
      });
    },
    /** Records a heartbeat; false when the agent is gone or revoked (the caller cuts the stream). */
    markSeen: async (id: string, at: Date): Promise<boolean> =>
      (await db.agent.updateMany({ where: { id, revokedAt: null }, data: { lastSeenAt: at } })).count === 1,
    /** Marks the agent disconnected unless a newer connection (after `connectedAt`) took over. */
    markDisconnected: (id: string, connectedAt: Date, at: Date) =>
      db.agent.updateMany({ where: { id, connectedAt }, data: { disconnectedAt: at } }),
    /**
     * Issues the agent's next bundle version: its sequence, incremented atomically in the store, so
     * two replicas never issue the same version or an older one. Throws not_found for an unknown agent.
     */
    nextBundleVersion: async (id: string): Promise<bigint> => {
      try {
        return (
          await db.agent.update({ where: { id }, data: { bundleSeq: { increment: 1n } }, select: { bundleSeq: true } })
        ).bundleSeq;
      } catch (error) {
        if ((error as { code?: unknown }).code === "P2025")
          throw new AppError("not_found", `no agent with id "${id}"`, { cause: error });
        throw error;
      }
    },
    /**
     * Records the bundle an agent acknowledged as applied: its version and, when known, the policy
     * revision it was compiled from and the key that signed it. An error about an older bundle is cleared.
     */
    recordBundleApplied: async (
      id: string,
      applied: { version: bigint; policyRevision?: bigint; keyId?: string },
    ): Promise<void> => {
      await db.$transaction([
        db.agent.updateMany({
          where: { id },
          data: {
            bundleVersion: applied.version,
            policyRevision: applied.policyRevision ?? 0n,
            bundleKeyId: applied.keyId ?? "",
          },
        }),
        db.agent.updateMany({
          where: { id, bundleErrorVersion: { lt: applied.version } },
          data: { bundleError: "", bundleErrorVersion: 0n, bundleErrorAt: null },
        }),
      ]);
    },
    /**
     * Marks the agent's bundle status with an error about bundle `version` (unless the agent has
     * applied a newer bundle since). Returns false when the same error was already on record, so
     * callers report a state change once, not at every push.
     */
    setBundleError: async (id: string, version: bigint, error: string, at: Date): Promise<boolean> => {
      const changed = await db.agent.updateMany({
        where: { id, bundleVersion: { lt: version }, NOT: { bundleError: error } },
        data: { bundleError: error, bundleErrorVersion: version, bundleErrorAt: at },
      });
      if (changed.count === 1) return true;
      // The same error again, about a newer bundle: keep it attached to the newest one.
      await db.agent.updateMany({
        where: { id, bundleVersion: { lt: version }, bundleErrorVersion: { lt: version } },
        data: { bundleErrorVersion: version },
      });
      return false;
    },
    /** Revokes: credential and enrolment cleared, resources removed, the record kept for audit. */
    revoke: async (id: string, at: Date): Promise<void> => {
      await db.$transaction([
        db.resource.deleteMany({ where: { agentId: id } }),
        db.agent.update({
          where: { id },
          data: {
            revokedAt: at,
            credentialHash: null,
            enrolmentHash: null,
            enrolmentExpiresAt: null,
            disconnectedAt: at,
          },
        }),
      ]);
    },
  };

  const resources = {
    list: async (filter: { agentId?: string; type?: ResourceType } = {}): Promise<ResourceRecord[]> =>
      (await db.resource.findMany({ where: filter, orderBy: { name: "asc" } })).map(toResource),
    findByName: async (name: string): Promise<ResourceRecord | undefined> => {
      const row = await db.resource.findUnique({ where: { name } });
      return row ? toResource(row) : undefined;
    },
    /**
     * Makes `agentId`'s resources exactly `inputs` (the agent's announcement). Names held by another
     * agent are not taken over; they are returned as rejected.
     */
    replaceForAgent: async (
      agentId: string,
      inputs: ResourceInput[],
      newId: () => string,
    ): Promise<{ accepted: string[]; rejected: { name: string; reason: string }[] }> =>
      db.$transaction(async (tx) => {
        const taken = await tx.resource.findMany({
          where: { name: { in: inputs.map((r) => r.name) }, NOT: { agentId } },
          select: { name: true },
        });
        const takenNames = new Set(taken.map((r) => r.name));
        const accepted = inputs.filter((r) => !takenNames.has(r.name));
        await tx.resource.deleteMany({ where: { agentId, name: { notIn: accepted.map((r) => r.name) } } });
        for (const r of accepted) {
          const data = { ...r, labels: JSON.stringify(r.labels), agentId };
          await tx.resource.upsert({ where: { name: r.name }, update: data, create: { id: newId(), ...data } });
        }
        return {
          accepted: accepted.map((r) => r.name),
          rejected: [...takenNames].map((name) => ({ name, reason: "the name is already announced by another agent" })),
        };
      }),
  };

  const settings = {
    get: async (key: string): Promise<string | undefined> => (await db.setting.findUnique({ where: { key } }))?.value,
    /** Sets `key` only if unset; returns the value in force (first writer wins across replicas). */
    setIfAbsent: async (key: string, value: string): Promise<string> => {
      try {
        await db.setting.create({ data: { key, value } });
        return value;
      } catch (error) {
        if (!isUniqueViolation(error)) throw error;
        return (await db.setting.findUniqueOrThrow({ where: { key } })).value;
      }
    },
  };

  const policies = {
    list: (): Promise<PolicyRecord[]> => db.policy.findMany({ orderBy: { name: "asc" } }),
    findByName: async (name: string): Promise<PolicyRecord | undefined> =>
      (await db.policy.findUnique({ where: { name } })) ?? undefined,
    /**
     * Applies a set of changes atomically and bumps the policy revision once; returns the new
     * revision. Documents are canonical JSON, validated by the caller.
     */
    change: async (
      changes: { upsert: { name: string; document: string }[]; remove: string[] },
      by: string,
      newId: () => string,
    ): Promise<bigint> =>
      db.$transaction(async (tx) => {
        const counter = await tx.counter.upsert({
          where: { name: "policy.revision" },
          create: { name: "policy.revision", value: 1n },
          update: { value: { increment: 1n } },
        });
        const revision = counter.value;
        for (const p of changes.upsert) {
          await tx.policy.upsert({
            where: { name: p.name },
            create: { id: newId(), name: p.name, document: p.document, revision, updatedBy: by },
            update: { document: p.document, revision, updatedBy: by },
          });
        }
        if (changes.remove.length > 0) await tx.policy.deleteMany({ where: { name: { in: changes.remove } } });
        return revision;
      }),
  };

  const counters = {
    get: async (name: string): Promise<bigint> => (await db.counter.findUnique({ where: { name } }))?.value ?? 0n,
    /** Atomically increments and returns the new value. */
    increment: async (name: string): Promise<bigint> =>
      (
        await db.counter.upsert({
          where: { name },
          create: { name, value: 1n },
          update: { value: { increment: 1n } },
        })
      ).value,
  };

  const signingKeys = {
    listActive: (use: string): Promise<SigningKeyRecord[]> =>
      db.signingKey.findMany({ where: { use, retiredAt: null }, orderBy: { createdAt: "asc" } }),
    listAll: (use: string): Promise<SigningKeyRecord[]> =>
      db.signingKey.findMany({ where: { use }, orderBy: { createdAt: "asc" } }),
    retire: (id: string, at: Date) =>
      db.signingKey.updateMany({ where: { id, retiredAt: null }, data: { retiredAt: at } }),
    create: (input: Omit<SigningKeyRecord, "createdAt" | "retiredAt">): Promise<SigningKeyRecord> =>
      db.signingKey.create({ data: input }),
  };

  const auditEvents = {
    // Ingestion (batched, raw SQL on the driver) lives in audit-trail.ts.
    /** Events matching `filter`, newest first (`order: "asc"`: oldest first), at most `limit`. */
    search: async (filter: AuditFilter, limit: number, order: "asc" | "desc" = "desc"): Promise<AuditEventRow[]> =>
      db.auditEvent.findMany({
        where: {
          ...(filter.agentId ? { agentId: filter.agentId } : {}),
          ...(filter.user ? { user: filter.user } : {}),
          ...(filter.resource ? { resource: filter.resource } : {}),
          ...(filter.type ? { type: filter.type } : {}),
          ...(filter.verdict ? { verdict: filter.verdict } : {}),
          ...(filter.text ? { text: { contains: filter.text } } : {}),
          time: { ...(filter.since ? { gte: filter.since } : {}), ...(filter.until ? { lt: filter.until } : {}) },
          AND: [
            ...(filter.before
              ? [
                  {
                    OR: [
                      { time: { lt: filter.before.time } },
                      { time: filter.before.time, id: { lt: filter.before.id } },
                    ],
                  },
                ]
              : []),
            ...(filter.after
              ? [
                  {
                    OR: [{ time: { gt: filter.after.time } }, { time: filter.after.time, id: { gt: filter.after.id } }],
                  },
                ]
              : []),
          ],
        },
        orderBy: [{ time: order }, { id: order }],
        take: limit,
      }),
    /**
     * Appends a control-plane event to the control plane's own chain: the next sequence number (an
     * atomic counter, which also serialises concurrent writers, replicas included) and the hash of
     * the previous control-plane event, in one transaction.
     */
    appendControlPlane: async (
      build: (seq: bigint, prevHash: Uint8Array) => Omit<AuditEventRow, "agentId">,
    ): Promise<AuditEventRow> =>
      db.$transaction(async (tx) => {
        const counter = await tx.counter.upsert({
          where: { name: "audit.control-plane.seq" },
          create: { name: "audit.control-plane.seq", value: 1n },
          update: { value: { increment: 1n } },
        });
        const previous = await tx.auditEvent.findUnique({
          where: { agentId_seq: { agentId: CONTROL_PLANE_AGENT_ID, seq: counter.value - 1n } },
          select: { hash: true },
        });
        const row = build(counter.value, previous ? Buffer.from(previous.hash, "hex") : new Uint8Array(0));
        await tx.auditEvent.create({
          data: { ...row, agentId: CONTROL_PLANE_AGENT_ID, payload: Buffer.from(row.payload) },
        });
        return { ...row, agentId: CONTROL_PLANE_AGENT_ID };
      }),
    /** An agent's events in sequence order, from `fromSeq`, `limit` at a time (for chain verification). */
    chain: (agentId: string, fromSeq: bigint, limit: number): Promise<AuditEventRow[]> =>
      db.auditEvent.findMany({ where: { agentId, seq: { gte: fromSeq } }, orderBy: { seq: "asc" }, take: limit }),
  };

  return {
    users,
    groups,
    accessTokens,
    apiKeys,
    agents,
    resources,
    settings,
    policies,
    counters,
    signingKeys,
    auditEvents,
  };
}

export type Repositories = ReturnType<typeof createRepositories>;
