/**
 * A small typed client for the control plane's REST API (/api/v1). It owns the HTTP details:
 * bearer authentication (an API key or an access token), timeouts, and turning every failure into a
 * `CliError` (problem+json into the API's code and field errors; a refused access token into
 * "session expired"; network failures into `unreachable`). It knows nothing of commands, config
 * files or output, and never puts a key, token or password in an error message.
 */
import type { Effect, MatchedRule, Obligations, PolicyDocument } from "@moat/policy";
import { CliError, CliErrorCode, errorFromProblem, sessionExpired, type Problem } from "./errors.js";
import { VERSION } from "./version.js";

/** An agent as the API returns it (dates are ISO strings). */
export interface Agent {
  id: string;
  name: string;
  description: string;
  state: "pending" | "connected" | "disconnected";
  connected: boolean;
  enrolledAt: string | null;
  lastSeenAt: string | null;
  connectedAt: string | null;
  version: string;
  hostname: string;
  bundleVersion: string;
  /** Policy revision of the bundle it enforces (absent from older servers). */
  policyRevision?: string;
  /** Why its latest bundle was not delivered or not applied ("" when fine; absent from older servers). */
  bundleError?: string;
  connectedTo: string;
  createdAt: string;
}

/** The resource types agents may announce. */
export const RESOURCE_TYPES = ["postgres", "ssh", "kubernetes", "http"] as const;
export type ResourceType = (typeof RESOURCE_TYPES)[number];

/** A resource an agent announces. */
export interface Resource {
  id: string;
  name: string;
  type: ResourceType;
  labels: Record<string, string>;
  listenAddress: string;
  description: string;
  agentId: string;
  agentName: string;
  updatedAt: string;
}

/** The roles of users and service accounts. */
export const ROLES = ["admin", "auditor", "reviewer", "member"] as const;
export type Role = (typeof ROLES)[number];

/** GET /api/v1/whoami: the caller, and the API key or access token it authenticated with. */
export interface Whoami {
  id: string;
  email: string;
  displayName: string;
  role: string;
  kind: UserKind;
  groups: string[];
  apiKeyId?: string;
  tokenId?: string;
}

/** People log in with a password; service accounts (machines) use API keys only. */
export type UserKind = "user" | "service-account";

/** A user or service account (a service account's `email` is its name). */
export interface User {
  id: string;
  email: string;
  displayName: string;
  role: string;
  kind: UserKind;
  groups: string[];
  hasPassword: boolean;
  disabled: boolean;
  createdAt: string;
  /** The identity-provider account single sign-on logs this user in as (absent from older servers). */
  oidc?: { issuer: string; subject: string } | null;
}

/** POST /api/v1/users */
export interface NewUser {
  email: string;
  displayName?: string;
  role: Role;
  groups?: string[];
  password?: string;
}

/** PATCH /api/v1/users/:id (at least one field). */
export interface UserPatch {
  displayName?: string;
  role?: Role;
  groups?: string[];
  disabled?: boolean;
  password?: string;
}

/** POST /api/v1/service-accounts */
export interface NewServiceAccount {
  name: string;
  role?: Role;
  groups?: string[];
}

/** An access token as issued by login or POST /api/v1/tokens (the token itself is a JWT). */
export interface AccessToken {
  accessToken: string;
  tokenType: "Bearer";
  tokenId: string;
  expiresAt: string;
}

/**
 * GET /api/v1/auth/oidc: the OpenID Connect issuer the control plane trusts, and the client the CLI
 * runs the login as (a public client: PKCE, no secret).
 */
export interface OidcConfig {
  issuer: string;
  clientId: string;
  scopes: string[];
  authorizationEndpoint: string;
  tokenEndpoint: string;
  /** Present when the issuer offers the device authorization grant (`moat login --sso --device`). */
  deviceAuthorizationEndpoint?: string;
}

/** An issued access token's metadata (GET /api/v1/tokens); the token itself is never stored. */
export interface AccessTokenInfo {
  id: string;
  userId: string;
  /** How it was obtained: "password", "api-key" or "oidc". */
  source: string;
  issuedAt: string;
  expiresAt: string;
  revokedAt: string | null;
}

/** An API key's metadata; the key itself is shown once, when created. */
export interface ApiKey {
  id: string;
  name: string;
  createdAt: string;
  expiresAt: string | null;
  revokedAt: string | null;
  lastUsedAt: string | null;
}

/** POST /api/v1/users/:id/api-keys */
export interface CreatedApiKey {
  key: ApiKey;
  /** moat_ak_<id>_<secret>: shown once. */
  apiKey: string;
}

/** A group with its member count. */
export interface Group {
  name: string;
  description: string;
  members: number;
}

/** GET /api/v1/status */
export interface ControlPlaneStatus {
  version: string;
  replica: string;
  store: string;
  agents: { total: number; connected: number; pending: number };
  resources: number;
}

/** GET /readyz (answered with 200 or 503, same shape). */
export interface Readiness {
  status: string;
  checks: Record<string, string>;
}

/** A one-time enrolment token. */
export interface EnrolmentToken {
  enrolmentToken: string;
  expiresAt: string;
}

/** POST /api/v1/agents */
export interface CreatedAgent extends EnrolmentToken {
  agent: Agent;
}

/** A stored policy (GET /api/v1/policies/:name). */
export interface Policy {
  name: string;
  /** The policy revision at which this document last changed. */
  revision: string;
  updatedBy: string;
  updatedAt: string;
  document: PolicyDocument;
}

/** POST /api/v1/policies/apply: what changed (or, in a dry run, would change), by policy name. */
export interface ApplyResult {
  dryRun: boolean;
  /** The policy revision after the apply (unchanged by a dry run or a no-op). */
  revision: string;
  created: string[];
  updated: string[];
  unchanged: string[];
  deleted: string[];
}

/** POST /api/v1/policies/simulate: a request as an agent would see it. */
export interface SimulateRequest {
  user: string;
  groups?: string[];
  serviceAccount?: boolean;
  resource: string;
  /** Given for a hypothetical resource; else the resource must be announced by an agent. */
  resourceType?: ResourceType;
  labels?: Record<string, string>;
  action: string;
  tables?: string[];
  command?: string;
  sourceIp?: string;
  /** ISO 8601 date-time with an offset; default now. */
  time?: string;
  reason?: string;
}

/** The verdict of a simulation, with every rule that applied. */
export interface SimulateVerdict {
  effect: Effect;
  /** The deciding rule (`policy/rule`), "" for the default deny. */
  rule: string;
  message: string;
  revision: string;
  obligations: Obligations;
  matched: MatchedRule[];
}

/** An audit event as the API shows it (GET /api/v1/audit/events, one line of /audit/export). */
export interface AuditEvent {
  id: string;
  agentId: string;
  seq: string;
  time: string;
  type: string;
  user: string;
  resource: string;
  sessionId: string;
  verdict: string;
  rule: string;
  message: string;
  bundleVersion: string;
  /** The event's detail (`kind`: dbQuery, sshExec, sessionStart, ...), null for none. */
  detail: ({ kind: string } & Record<string, unknown>) | null;
}

/** Filters of the audit search and export (`agent` is an agent id, or "control-plane"). */
export interface AuditEventFilter {
  agent?: string;
  user?: string;
  resource?: string;
  type?: string;
  verdict?: "allow" | "deny" | "review";
  /** ISO 8601 date-times. */
  since?: string;
  until?: string;
  /** Text in the query, command or message. */
  q?: string;
}

/** A session in the audit trail (GET /api/v1/audit/sessions). */
export interface AuditSession {
  sessionId: string;
  agentId: string;
  user: string;
  resource: string;
  startedAt: string;
  endedAt: string | null;
  lastEventAt: string;
  eventCount: number;
  statementCount: number;
  deniedCount: number;
}

/** A page of a keyset-paginated list: pass `nextCursor` back as `cursor` for the next one. */
export interface Page<T> {
  items: T[];
  nextCursor?: string;
}

/** The API calls the CLI makes. Every method rejects with a `CliError`. */
export interface ApiClient {
  readonly server: string;
  health(): Promise<{ status: string }>;
  readiness(): Promise<Readiness>;
  whoami(): Promise<Whoami>;
  status(): Promise<ControlPlaneStatus>;
  listAgents(): Promise<Agent[]>;
  getAgent(id: string): Promise<Agent>;
  createAgent(input: { name: string; description?: string }): Promise<CreatedAgent>;
  issueEnrolmentToken(agentId: string): Promise<EnrolmentToken>;
  deleteAgent(agentId: string): Promise<void>;
  listResources(filter?: { type?: ResourceType; agentId?: string }): Promise<Resource[]>;
  listPolicies(): Promise<Policy[]>;
  getPolicy(name: string): Promise<Policy>;
  deletePolicy(name: string): Promise<void>;
  applyPolicies(input: { documents: PolicyDocument[]; prune: boolean; dryRun: boolean }): Promise<ApplyResult>;
  simulatePolicy(request: SimulateRequest): Promise<SimulateVerdict>;
  /** Password login (sent without any credential). */
  login(email: string, password: string): Promise<AccessToken>;
  /** The single sign-on issuer (public); `not_found` when single sign-on is not configured. */
  oidcConfig(): Promise<OidcConfig>;
  /** Exchanges the issuer's ID token (and the nonce the login sent) for an access token (public). */
  oidcLogin(idToken: string, nonce?: string): Promise<AccessToken>;
  /** An access token for the caller; the control plane issues them against an API key only. */
  issueToken(): Promise<AccessToken>;
  /** Tokens of `userId` (an id or "me"; default the caller). */
  listTokens(userId?: string): Promise<AccessTokenInfo[]>;
  revokeToken(tokenId: string): Promise<void>;
  listUsers(): Promise<User[]>;
  /** One user by id, or "me". */
  getUser(id: string): Promise<User>;
  createUser(input: NewUser): Promise<User>;
  updateUser(id: string, patch: UserPatch): Promise<User>;
  /** Links a user to an identity-provider account (issuer default: the server's configured one). */
  linkOidc(id: string, input: { subject: string; issuer?: string }): Promise<User>;
  unlinkOidc(id: string): Promise<void>;
  createServiceAccount(input: NewServiceAccount): Promise<User>;
  /** API keys of a user (an id or "me"). */
  listApiKeys(userId: string): Promise<ApiKey[]>;
  createApiKey(userId: string, input: { name: string; expiresInDays?: number }): Promise<CreatedApiKey>;
  revokeApiKey(keyId: string): Promise<void>;
  listGroups(): Promise<Group[]>;
  /** One page of audit events, newest first (`order: "asc"`: oldest first). */
  searchAuditEvents(
    filter: AuditEventFilter & { limit?: number; cursor?: string; order?: "asc" | "desc" },
  ): Promise<Page<AuditEvent>>;
  listAuditSessions(
    filter: Pick<AuditEventFilter, "agent" | "user" | "resource" | "since" | "until"> & {
      limit?: number;
      cursor?: string;
    },
  ): Promise<Page<AuditSession>>;
  getAuditSession(
    id: string,
    options?: { agent?: string; limit?: number; cursor?: string },
  ): Promise<Page<AuditEvent> & { session: AuditSession }>;
  /**
   * The audit export (JSON Lines), as a stream of chunks. The timeout covers the wait for the
   * answer to start, not the whole transfer, which may take minutes.
   */
  exportAuditEvents(filter: AuditEventFilter): Promise<AsyncIterable<Uint8Array>>;
  /** The events stored after `cursor` (GET /api/v1/audit/follow); without one, a cursor at the end. */
  followAuditEvents(
    filter: AuditEventFilter & { limit?: number; cursor?: string },
  ): Promise<{ items: AuditEvent[]; cursor: string }>;
}

/**
 * How a client authenticates, both sent as `Authorization: Bearer`: an API key, or the access token
 * of a password or single sign-on login (whose refusal means "log in again", so the email, or that
 * it was single sign-on, is kept for the hint).
 */
export type ClientAuth = { apiKey: string } | { accessToken: string; email?: string; sso?: boolean };

/** What a client needs: one control plane, optionally one credential, and a per-request timeout. */
export interface ApiClientOptions {
  /** Base URL of the control plane, normalised (see `normalizeServer`). */
  server: string;
  auth?: ClientAuth;
  timeoutMs: number;
  /** Injected in tests; defaults to the global fetch. */
  fetch?: typeof fetch;
}

interface RequestOptions {
  body?: unknown;
  query?: Record<string, string | undefined>;
  /** Statuses besides 2xx whose JSON body is a normal answer (e.g. /readyz's 503). */
  acceptStatuses?: number[];
  /** Public routes (probes, password login) are called without the credential. */
  anonymous?: boolean;
}

const networkErrorNames: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset",
  ENOTFOUND: "host not found",
  EAI_AGAIN: "DNS lookup failed",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  ETIMEDOUT: "connection timed out",
  UND_ERR_CONNECT_TIMEOUT: "connection timed out",
  UND_ERR_SOCKET: "connection closed",
  CERT_HAS_EXPIRED: "TLS certificate expired",
  DEPTH_ZERO_SELF_SIGNED_CERT: "self-signed TLS certificate",
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: "TLS certificate not trusted",
  ERR_TLS_CERT_ALTNAME_INVALID: "TLS certificate does not match the host",
};

/** Why a fetch failed, in words: undici hides the socket error in `cause` (or in an AggregateError). */
export function describeNetworkError(error: unknown, timeoutMs: number): string {
  const name = (error as { name?: string } | undefined)?.name;
  if (name === "TimeoutError" || name === "AbortError") return `no answer within ${timeoutMs / 1000}s`;
  let cause: unknown = (error as { cause?: unknown } | undefined)?.cause ?? error;
  if (cause instanceof AggregateError && cause.errors.length > 0) cause = cause.errors[0];
  const code = (cause as { code?: unknown } | undefined)?.code;
  if (typeof code === "string") return networkErrorNames[code] ? `${networkErrorNames[code]} (${code})` : code;
  return (cause as Error | undefined)?.message ?? String(error);
}

function isProblem(value: unknown): value is Problem {
  const v = value as Partial<Problem> | null;
  return typeof v === "object" && v !== null && typeof v.code === "string" && typeof v.detail === "string";
}

/** Creates a client for one control plane and (optionally) one API key or access token. */
export function createApiClient(options: ApiClientOptions): ApiClient {
  const doFetch = options.fetch ?? fetch;
  const auth = options.auth;
  const bearer = auth === undefined ? undefined : "apiKey" in auth ? auth.apiKey : auth.accessToken;
  // A trailing slash makes relative paths resolve under a path prefix (a control plane behind a
  // reverse proxy at https://host/moat/).
  const base = options.server.endsWith("/") ? options.server : `${options.server}/`;
  const unreachable = (detail: string, cause?: unknown) =>
    new CliError(CliErrorCode.unreachable, `cannot reach the control plane at ${options.server}: ${detail}`, { cause });

  /** Query parameters from an object: numbers as decimal strings, undefined left out. */
  const params = (query: object): Record<string, string | undefined> =>
    Object.fromEntries(Object.entries(query).map(([k, v]) => [k, v === undefined ? undefined : String(v)]));

  /**
   * GET `path` and hand back the body as a stream once the answer starts (2xx); errors become
   * CliErrors as in `request`, which reads the error body whole.
   */
  async function stream(path: string, query: Record<string, string | undefined>): Promise<AsyncIterable<Uint8Array>> {
    const url = new URL(path, base);
    for (const [key, value] of Object.entries(query)) if (value !== undefined) url.searchParams.set(key, value);
    const headers: Record<string, string> = { accept: "application/x-ndjson", "user-agent": `moat-cli/${VERSION}` };
    if (bearer) headers.authorization = `Bearer ${bearer}`;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new DOMException("timed out", "TimeoutError")), options.timeoutMs);
    let response: Response;
    try {
      response = await doFetch(url, { method: "GET", headers, redirect: "manual", signal: controller.signal });
    } catch (error) {
      throw unreachable(describeNetworkError(error, options.timeoutMs), error);
    } finally {
      clearTimeout(timer);
    }
    if (response.status >= 200 && response.status < 300 && response.body) {
      const body = response.body;
      return (async function* () {
        try {
          for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) yield chunk;
        } catch (error) {
          throw unreachable(`the answer broke off: ${describeNetworkError(error, options.timeoutMs)}`, error);
        }
      })();
    }
    if (response.status >= 300 && response.status < 400) {
      await response.body?.cancel().catch(() => undefined);
      throw new CliError(
        CliErrorCode.unexpectedResponse,
        `the server answered ${url.pathname} with a redirect (HTTP ${response.status})`,
        { hint: "use the final URL of the control plane with --server" },
      );
    }
    let body: unknown;
    try {
      body = JSON.parse(await response.text());
    } catch {
      body = undefined;
    }
    failed("GET", url, response.status, body, false);
  }

  async function request<T>(method: string, path: string, req: RequestOptions = {}): Promise<T> {
    const url = new URL(path, base);
    for (const [key, value] of Object.entries(req.query ?? {}))
      if (value !== undefined) url.searchParams.set(key, value);
    const headers: Record<string, string> = { accept: "application/json", "user-agent": `moat-cli/${VERSION}` };
    if (!req.anonymous && bearer) headers.authorization = `Bearer ${bearer}`;
    if (req.body !== undefined) headers["content-type"] = "application/json";

    let response: Response;
    let text: string;
    try {
      response = await doFetch(url, {
        method,
        headers,
        ...(req.body !== undefined ? { body: JSON.stringify(req.body) } : {}),
        // Redirects are refused rather than followed, so the key is never replayed to another origin
        // and the user learns the right URL.
        redirect: "manual",
        signal: AbortSignal.timeout(options.timeoutMs),
      });
      text = await response.text();
    } catch (error) {
      throw unreachable(describeNetworkError(error, options.timeoutMs), error);
    }

    if (response.status >= 300 && response.status < 400) {
      const location = response.headers.get("location");
      throw new CliError(
        CliErrorCode.unexpectedResponse,
        `the server answered ${url.pathname} with a redirect (HTTP ${response.status})${location ? ` to ${location}` : ""}`,
        { hint: "use the final URL of the control plane with --server" },
      );
    }

    let body: unknown = undefined;
    if (text.length > 0) {
      try {
        body = JSON.parse(text);
      } catch {
        body = undefined;
      }
    }
    const ok = (response.status >= 200 && response.status < 300) || req.acceptStatuses?.includes(response.status);
    if (ok) {
      if (response.status === 204) return undefined as T;
      if (body === undefined) {
        throw new CliError(
          CliErrorCode.unexpectedResponse,
          `the server answered ${url.pathname} with something other than JSON`,
          {
            hint: "check that --server points at a Moat control plane",
          },
        );
      }
      return body as T;
    }
    failed(method, url, response.status, body, req.anonymous === true);
  }

  /** Turns an answer that is not a success into the right CliError. */
  function failed(method: string, url: URL, status: number, body: unknown, anonymous: boolean): never {
    if (isProblem(body)) {
      // A refused access token (expired, revoked, or its user disabled) is fixed the same way every
      // time: a new login, the same way as before.
      if (body.code === "unauthenticated" && !anonymous && auth && "accessToken" in auth) {
        const login = { ...(auth.email ? { email: auth.email } : {}), ...(auth.sso ? { sso: true } : {}) };
        throw sessionExpired(options.server, login, errorFromProblem(body));
      }
      // A public route (login) refuses who you are, e.g. a disabled account, not a key's role: no hint.
      const hint =
        body.code === "unauthenticated" && !anonymous
          ? `log in again: \`moat login --server ${options.server}\``
          : body.code === "permission_denied" && !anonymous
            ? "ask an admin for a key with a role that may do this"
            : undefined;
      throw errorFromProblem(body, hint);
    }
    // No problem document: something between us and the control plane answered (a proxy, or a
    // different service). Gateway errors mean the control plane itself is not answering.
    if ([502, 503, 504].includes(status)) throw unreachable(`HTTP ${status} from the server or a proxy in front of it`);
    throw new CliError(
      CliErrorCode.unexpectedResponse,
      `the server answered ${method} ${url.pathname} with HTTP ${status}`,
      {
        hint: "check that --server points at a Moat control plane",
      },
    );
  }

  return {
    server: options.server,
    health: () => request("GET", "healthz", { anonymous: true }),
    readiness: () => request("GET", "readyz", { anonymous: true, acceptStatuses: [503] }),
    whoami: () => request("GET", "api/v1/whoami"),
    status: () => request("GET", "api/v1/status"),
    listAgents: async () => (await request<{ items: Agent[] }>("GET", "api/v1/agents")).items,
    getAgent: (id) => request("GET", `api/v1/agents/${encodeURIComponent(id)}`),
    createAgent: (input) => request("POST", "api/v1/agents", { body: input }),
    issueEnrolmentToken: (agentId) => request("POST", `api/v1/agents/${encodeURIComponent(agentId)}/enrolment-token`),
    deleteAgent: (agentId) => request("DELETE", `api/v1/agents/${encodeURIComponent(agentId)}`),
    listResources: async (filter = {}) =>
      (
        await request<{ items: Resource[] }>("GET", "api/v1/resources", {
          query: { type: filter.type, agent: filter.agentId },
        })
      ).items,
    listPolicies: async () => (await request<{ items: Policy[] }>("GET", "api/v1/policies")).items,
    getPolicy: (name) => request("GET", `api/v1/policies/${encodeURIComponent(name)}`),
    deletePolicy: (name) => request("DELETE", `api/v1/policies/${encodeURIComponent(name)}`),
    applyPolicies: (input) => request("POST", "api/v1/policies/apply", { body: input }),
    simulatePolicy: (input) => request("POST", "api/v1/policies/simulate", { body: input }),
    login: (email, password) => request("POST", "api/v1/auth/login", { body: { email, password }, anonymous: true }),
    oidcConfig: () => request("GET", "api/v1/auth/oidc", { anonymous: true }),
    oidcLogin: (idToken, nonce) =>
      request("POST", "api/v1/auth/oidc/token", {
        body: { idToken, ...(nonce === undefined ? {} : { nonce }) },
        anonymous: true,
      }),
    issueToken: () => request("POST", "api/v1/tokens"),
    listTokens: async (userId) =>
      (await request<{ items: AccessTokenInfo[] }>("GET", "api/v1/tokens", { query: { user: userId } })).items,
    revokeToken: (tokenId) => request("DELETE", `api/v1/tokens/${encodeURIComponent(tokenId)}`),
    listUsers: async () => (await request<{ items: User[] }>("GET", "api/v1/users")).items,
    getUser: (id) => request("GET", `api/v1/users/${encodeURIComponent(id)}`),
    createUser: (input) => request("POST", "api/v1/users", { body: input }),
    updateUser: (id, patch) => request("PATCH", `api/v1/users/${encodeURIComponent(id)}`, { body: patch }),
    linkOidc: (id, input) => request("POST", `api/v1/users/${encodeURIComponent(id)}/oidc-link`, { body: input }),
    unlinkOidc: (id) => request("DELETE", `api/v1/users/${encodeURIComponent(id)}/oidc-link`),
    createServiceAccount: (input) => request("POST", "api/v1/service-accounts", { body: input }),
    listApiKeys: async (userId) =>
      (await request<{ items: ApiKey[] }>("GET", `api/v1/users/${encodeURIComponent(userId)}/api-keys`)).items,
    createApiKey: (userId, input) =>
      request("POST", `api/v1/users/${encodeURIComponent(userId)}/api-keys`, { body: input }),
    revokeApiKey: (keyId) => request("DELETE", `api/v1/api-keys/${encodeURIComponent(keyId)}`),
    listGroups: async () => (await request<{ items: Group[] }>("GET", "api/v1/groups")).items,
    searchAuditEvents: (filter) => request("GET", "api/v1/audit/events", { query: params(filter) }),
    listAuditSessions: (filter) => request("GET", "api/v1/audit/sessions", { query: params(filter) }),
    getAuditSession: (id, query = {}) =>
      request("GET", `api/v1/audit/sessions/${encodeURIComponent(id)}`, { query: params(query) }),
    exportAuditEvents: (filter) => stream("api/v1/audit/export", params(filter)),
    followAuditEvents: (filter) => request("GET", "api/v1/audit/follow", { query: params(filter) }),
  };
}
