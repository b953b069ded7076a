/**
 * A small typed client for the control plane's REST API (/api/v1). It owns the HTTP details:
 * bearer authentication, timeouts, and turning every failure into a `CliError` (problem+json into
 * the API's code and field errors; network failures into `unreachable`). It knows nothing of
 * commands, config files or output, and never puts the API key in an error message.
 */
import type { Effect, MatchedRule, Obligations, PolicyDocument } from "@moat/policy";
import { CliError, CliErrorCode, errorFromProblem, type Problem } from "./errors.js";
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

/** GET /api/v1/whoami */
export interface Whoami {
  id: string;
  email: string;
  displayName: string;
  role: string;
  apiKeyId: string;
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
}

/** What a client needs: one control plane, optionally one API key, and a per-request timeout. */
export interface ApiClientOptions {
  /** Base URL of the control plane, normalised (see `normalizeServer`). */
  server: string;
  apiKey?: string;
  timeoutMs: number;
  /** Injected in tests; defaults to the global fetch. */
  fetch?: typeof fetch;
}

interface RequestOptions {
  body?: unknown;
  query?: Record<string, string | undefined>;
  /** Statuses besides 2xx whose JSON body is a normal answer (e.g. /readyz's 503). */
  acceptStatuses?: number[];
  /** Public routes (probes) are called without the key. */
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
function describeNetworkError(error: unknown, timeoutMs: number): string {
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

/** Creates a client for one control plane and (optionally) one API key. */
export function createApiClient(options: ApiClientOptions): ApiClient {
  const doFetch = options.fetch ?? fetch;
  // A trailing slash makes relative paths resolve under a path prefix (a control plane behind a
  // reverse proxy at https://host/moat/).
  const base = options.server.endsWith("/") ? options.server : `${options.server}/`;
  const unreachable = (detail: string, cause?: unknown) =>
    new CliError(CliErrorCode.unreachable, `cannot reach the control plane at ${options.server}: ${detail}`, { cause });

  async function request<T>(method: string, path: string, req: RequestOptions = {}): Promise<T> {
    const url = new URL(path, base);
    for (const [key, value] of Object.entries(req.query ?? {}))
      if (value !== undefined) url.searchParams.set(key, value);
    const headers: Record<string, string> = { accept: "application/json", "user-agent": `moat-cli/${VERSION}` };
    if (!req.anonymous && options.apiKey) headers.authorization = `Bearer ${options.apiKey}`;
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
    if (isProblem(body)) {
      const hint =
        body.code === "unauthenticated"
          ? `log in again: \`moat login --server ${options.server}\``
          : body.code === "permission_denied"
            ? "ask an admin for a key with a role that may do this"
            : undefined;
      throw errorFromProblem(body, hint);
    }
    // No problem document: something between us and the control plane answered (a proxy, or a
    // different service). Gateway errors mean the control plane itself is not answering.
    if ([502, 503, 504].includes(response.status))
      throw unreachable(`HTTP ${response.status} from the server or a proxy in front of it`);
    throw new CliError(
      CliErrorCode.unexpectedResponse,
      `the server answered ${method} ${url.pathname} with HTTP ${response.status}`,
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
  };
}
