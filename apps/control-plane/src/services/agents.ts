/**
 * Agent lifecycle: create (with a one-time enrolment token), enrol (token -> long-lived credential),
 * authenticate a stream's credential, revoke, and report status. Secrets are returned once and
 * stored only as hashes.
 */
import {
  AppError,
  decodeEnrolmentToken,
  encodeEnrolmentToken,
  generateSecret,
  hashSecret,
  newEnrolmentSecret,
  parseSecret,
  randomId,
  SecretKind,
  verifySecret,
} from "@moat/common";
import type { EventBus } from "../bus.js";
import type { AgentRecord, Store } from "../store/index.js";

export interface AgentStatus {
  id: string;
  name: string;
  description: string;
  /** "pending" until the enrolment token is used. */
  state: "pending" | "connected" | "disconnected";
  connected: boolean;
  enrolledAt: Date | null;
  lastSeenAt: Date | null;
  connectedAt: Date | null;
  version: string;
  hostname: string;
  bundleVersion: string;
  /** Policy revision of the bundle the agent enforces ("0" when unknown or none). */
  policyRevision: string;
  /** Key that signed the bundle the agent enforces ("" when unknown). */
  bundleKeyId: string;
  /** Why the agent's latest bundle was not delivered or not applied ("" when fine). */
  bundleError: string;
  bundleErrorAt: Date | null;
  connectedTo: string;
  createdAt: Date;
}

export interface AgentService {
  create(input: {
    name: string;
    description?: string;
  }): Promise<{ agent: AgentStatus; enrolmentToken: string; expiresAt: Date }>;
  /** Issues a fresh enrolment token (the previous one stops working); for first enrolment or re-enrolment. */
  issueEnrolmentToken(id: string): Promise<{ enrolmentToken: string; expiresAt: Date }>;
  /** Exchanges an enrolment token for a credential, once. */
  enrol(
    token: string,
    details: { version: string; hostname: string },
  ): Promise<{ agent: AgentRecord; credential: string }>;
  /** Resolves a presented agent credential; throws unauthenticated / agent_revoked. */
  authenticate(credential: string): Promise<AgentRecord>;
  get(id: string): Promise<AgentStatus>;
  list(): Promise<AgentStatus[]>;
  revoke(id: string): Promise<void>;
  toStatus(agent: AgentRecord): AgentStatus;
}

export function createAgentService(deps: {
  store: Pick<Store, "agents">;
  bus: Pick<EventBus, "publish">;
  now: () => Date;
  /** host:port agents dial, written into enrolment tokens. */
  endpoint: () => string;
  /** CA fingerprint agents pin ("" for plaintext). */
  caFingerprint: string;
  enrolmentTtlMs: number;
  /** An agent whose last heartbeat is older than this is shown disconnected. */
  staleAfterMs: number;
}): AgentService {
  const { store, bus, now } = deps;

  function toStatus(agent: AgentRecord): AgentStatus {
    const fresh = agent.lastSeenAt !== null && now().getTime() - agent.lastSeenAt.getTime() <= deps.staleAfterMs;
    const connected = agent.connectedAt !== null && agent.disconnectedAt === null && fresh;
    return {
      id: agent.id,
      name: agent.name,
      description: agent.description,
      state: agent.enrolledAt === null ? "pending" : connected ? "connected" : "disconnected",
      connected,
      enrolledAt: agent.enrolledAt,
      lastSeenAt: agent.lastSeenAt,
      connectedAt: agent.connectedAt,
      version: agent.version,
      hostname: agent.hostname,
      bundleVersion: agent.bundleVersion.toString(),
      policyRevision: agent.policyRevision.toString(),
      bundleKeyId: agent.bundleKeyId,
      bundleError: agent.bundleError,
      bundleErrorAt: agent.bundleErrorAt,
      connectedTo: connected ? agent.connectedTo : "",
      createdAt: agent.createdAt,
    };
  }

  function newToken(agentId: string) {
    const secret = newEnrolmentSecret();
    const expiresAt = new Date(now().getTime() + deps.enrolmentTtlMs);
    const enrolmentToken = encodeEnrolmentToken({
      agentId,
      secret,
      caFingerprint: deps.caFingerprint,
      endpoint: deps.endpoint(),
    });
    return { enrolmentToken, hash: hashSecret(secret), expiresAt };
  }

  async function mustFindActive(id: string): Promise<AgentRecord> {
    const agent = await store.agents.findById(id);
    if (!agent || agent.revokedAt) throw new AppError("not_found", `no agent with id "${id}"`);
    return agent;
  }

  const invalidToken = () =>
    new AppError(
      "enrolment_token_invalid",
      "the enrolment token is invalid, expired or already used; ask an admin for a new one",
    );

  return {
    toStatus,

    async create(input) {
      const id = randomId();
      const token = newToken(id);
      const agent = await store.agents.create({
        id,
        name: input.name,
        description: input.description ?? "",
        enrolmentHash: token.hash,
        enrolmentExpiresAt: token.expiresAt,
      });
      return { agent: toStatus(agent), enrolmentToken: token.enrolmentToken, expiresAt: token.expiresAt };
    },

    async issueEnrolmentToken(id) {
      await mustFindActive(id);
      const token = newToken(id);
      await store.agents.setEnrolment(id, token.hash, token.expiresAt);
      return { enrolmentToken: token.enrolmentToken, expiresAt: token.expiresAt };
    },

    async enrol(token, details) {
      let decoded;
      try {
        decoded = decodeEnrolmentToken(token);
      } catch (error) {
        throw new AppError("enrolment_token_invalid", (error as Error).message);
      }
      const agent = await store.agents.findById(decoded.agentId);
      if (!agent) throw invalidToken();
      if (agent.revokedAt) throw new AppError("agent_revoked", "this agent has been revoked");
      if (!agent.enrolmentHash || !verifySecret(decoded.secret, agent.enrolmentHash)) throw invalidToken();
      if (!agent.enrolmentExpiresAt || agent.enrolmentExpiresAt <= now()) throw invalidToken();
      const credential = generateSecret(SecretKind.agentCredential, agent.id);
      const swapped = await store.agents.completeEnrolment(
        agent.id,
        agent.enrolmentHash,
        credential.hash,
        details,
        now(),
      );
      if (!swapped) throw invalidToken();
      return { agent: await mustFindActive(agent.id), credential: credential.value };
    },

    async authenticate(credential) {
      const parsed = parseSecret(credential);
      const unauthenticated = new AppError("unauthenticated", "the agent credential is invalid");
      if (!parsed || parsed.kind !== SecretKind.agentCredential) throw unauthenticated;
      const agent = await store.agents.findById(parsed.id);
      if (!agent) throw unauthenticated;
      if (agent.revokedAt) throw new AppError("agent_revoked", "this agent has been revoked");
      if (!agent.credentialHash || !verifySecret(credential, agent.credentialHash)) throw unauthenticated;
      return agent;
    },

    async get(id) {
      return toStatus(await mustFindActive(id));
    },

    async list() {
      return (await store.agents.listActive()).map(toStatus);
    },

    async revoke(id) {
      await mustFindActive(id);
      await store.agents.revoke(id, now());
      await bus.publish("agent.revoked", { agentId: id, reason: "the agent was deleted by an admin" });
    },
  };
}
