/**
 * Agent configuration: YAML file + environment overrides, validated once at start. Resources list
 * what this agent fronts; only their public parts (name, type, labels, listen address) are ever sent
 * to the control plane.
 */
import { isAbsolute, resolve } from "node:path";
import { Type, type Static } from "@sinclair/typebox";
import {
  applyEnvOverrides,
  ConfigError,
  LogLevelSchema,
  readConfigFile,
  validateConfig,
  type EnvOverride,
} from "@moat/common";
import { DEFAULT_MAX_MESSAGE_BYTES } from "@moat/proto";

const strict = { additionalProperties: false } as const;
const HostPort = Type.String({
  pattern: "^(\\[[0-9a-fA-F:.]+\\]|[^\\s:\\[\\]]+):[0-9]{1,5}$",
  description: "host:port",
});

/** How the agent reaches a Postgres target and with which credentials (they never leave this host). */
export const PostgresTargetSchema = Type.Object(
  {
    host: Type.String({ minLength: 1 }),
    port: Type.Integer({ minimum: 1, maximum: 65535, default: 5432 }),
    /** Role the agent logs in as. */
    user: Type.String({ minLength: 1 }),
    /** Database to connect to; default: the one the client asks for. */
    database: Type.Optional(Type.String({ minLength: 1 })),
    /** The role's password, from a file (first line) or an environment variable; inline only for tests. */
    passwordFile: Type.Optional(Type.String({ minLength: 1 })),
    passwordEnv: Type.Optional(Type.String({ minLength: 1 })),
    password: Type.Optional(Type.String()),
    /** TLS to the target, with libpq's meanings. */
    sslmode: Type.Union(
      ["disable", "prefer", "require", "verify-ca", "verify-full"].map((m) => Type.Literal(m)),
      { default: "prefer" },
    ),
    /** CA bundle for verify-ca / verify-full. */
    caFile: Type.Optional(Type.String({ minLength: 1 })),
    /** Name to verify for verify-full, when it differs from host. */
    serverName: Type.Optional(Type.String({ minLength: 1 })),
    connectTimeoutMs: Type.Integer({ minimum: 100, default: 10_000 }),
    /**
     * `none`: the target is PostgreSQL itself. `session`: a connection pooler giving each agent
     * session its own server connection for as long as it lasts (pgbouncer `pool_mode = session`).
     * An undeclared pooler is refused at connect (its process id is not the server's). `session` is
     * trusted, not checked: transaction and statement pooling share server connections between
     * sessions, which the agent's per-session decisions cannot follow (docs/postgres.md).
     */
    pooler: Type.Union([Type.Literal("none"), Type.Literal("session")], { default: "none" }),
  },
  strict,
);

export const PostgresListenerSchema = Type.Object(
  {
    target: PostgresTargetSchema,
    /** Certificate users' clients see. Default: one the agent issues itself (dataDir/pg-tls). */
    tls: Type.Optional(
      Type.Object({ certFile: Type.String({ minLength: 1 }), keyFile: Type.String({ minLength: 1 }) }, strict),
    ),
    /** Where tokens may be sent without TLS: only from loopback clients (default), never, or always. */
    plaintextAuth: Type.Union([Type.Literal("loopback"), Type.Literal("never"), Type.Literal("always")], {
      default: "loopback",
    }),
    /** Longest message accepted from a client or inspected from the target. */
    maxMessageBytes: Type.Integer({ minimum: 64 * 1024, default: 64 * 1024 * 1024 }),
    /**
     * Longest SQL text (characters) the agent parses; a longer statement is refused (54000), the
     * session goes on. Parsing needs memory in proportion (a 10 MiB IN list ~0.9 GiB). Default:
     * 16 Mi characters, less where the JavaScript heap limit is under 1 GiB (limit / 64).
     */
    maxStatementLength: Type.Optional(Type.Integer({ minimum: 64 * 1024 })),
    /** Most statement shapes whose classification is cached. */
    classifierCacheEntries: Type.Integer({ minimum: 0, default: 10_000 }),
    /**
     * Query and Parse messages at least this long are classified on a worker thread, not on the
     * event loop every session shares (parsing costs about 1 ms per KiB); 0: all on the loop.
     */
    parseOffThreadBytes: Type.Integer({ minimum: 0, default: 16 * 1024 }),
    /** Most concurrent sessions on this resource. */
    maxSessions: Type.Integer({ minimum: 1, default: 1000 }),
    /** A connection that has not finished TLS, start-up and authentication by then is closed (08006). */
    setupTimeoutMs: Type.Integer({ minimum: 100, default: 30_000 }),
    /**
     * Sessions of users no policy rule could let change anything (only connect, db:read,
     * db:copy-out) are opened read-only on the target (default_transaction_read_only = on), so
     * PostgreSQL itself refuses a write the text did not show (a function called implicitly).
     */
    readOnlySessions: Type.Boolean({ default: true }),
  },
  strict,
);

export const ResourceConfigSchema = Type.Object(
  {
    name: Type.String({ pattern: "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", maxLength: 63 }),
    type: Type.Union([Type.Literal("postgres"), Type.Literal("ssh"), Type.Literal("kubernetes"), Type.Literal("http")]),
    /** Where users connect to this resource through the agent. */
    listen: HostPort,
    labels: Type.Record(Type.String({ pattern: "^[A-Za-z0-9_./-]{1,63}$" }), Type.String({ maxLength: 255 }), {
      default: {},
    }),
    description: Type.String({ maxLength: 500, default: "" }),
    /** For type postgres: the target and how users reach it. */
    postgres: Type.Optional(PostgresListenerSchema),
  },
  strict,
);

export const AgentConfigSchema = Type.Object(
  {
    dataDir: Type.String({ minLength: 1, default: ".moat/agent" }),
    logLevel: LogLevelSchema,
    /** One-time enrolment token (prefer MOAT_AGENT_ENROLMENT_TOKEN or enrolmentTokenFile). */
    enrolmentToken: Type.Optional(Type.String({ minLength: 1 })),
    enrolmentTokenFile: Type.Optional(Type.String({ minLength: 1 })),
    controlPlane: Type.Object(
      {
        /** host:port of the control plane's gRPC listener. Default: the endpoint in the enrolment token. */
        address: Type.Optional(HostPort),
        /** PEM file of the control plane's CA, instead of pinning the fingerprint in the token. */
        caFile: Type.Optional(Type.String()),
        /** TLS server name to verify, when it differs from the address's host. */
        serverName: Type.Optional(Type.String()),
        /** Connect without TLS: only to a loopback address, and only if the control plane is configured so. */
        plaintext: Type.Boolean({ default: false }),
        maxMessageBytes: Type.Integer({ minimum: 64 * 1024, default: DEFAULT_MAX_MESSAGE_BYTES }),
      },
      { ...strict, default: {} },
    ),
    reconnect: Type.Object(
      {
        initialDelayMs: Type.Integer({ minimum: 50, default: 250 }),
        maxDelayMs: Type.Integer({ minimum: 100, default: 4_000 }),
      },
      { ...strict, default: {} },
    ),
    /** Local admin endpoint: /healthz and /metrics. */
    admin: Type.Object(
      {
        enabled: Type.Boolean({ default: true }),
        host: Type.String({ default: "127.0.0.1" }),
        port: Type.Integer({ minimum: 0, maximum: 65535, default: 7072 }),
        /** Answer POST /v1/decide (policy decisions from the local bundle, for troubleshooting). */
        decisionEndpoint: Type.Boolean({ default: false }),
      },
      { ...strict, default: {} },
    ),
    /** The durable audit spool (dataDir/audit). */
    audit: Type.Object(
      {
        /** Events not yet stored by the control plane may use this much disk. */
        maxBytes: Type.Integer({ minimum: 1024 * 1024, default: 256 * 1024 * 1024 }),
        segmentBytes: Type.Integer({ minimum: 64 * 1024, default: 4 * 1024 * 1024 }),
        /** When full: refuse new sessions (fail-closed) or drop the oldest unshipped events, recording the gap. */
        whenFull: Type.Union([Type.Literal("fail-closed"), Type.Literal("drop-oldest")], { default: "fail-closed" }),
      },
      { ...strict, default: {} },
    ),
    /** What SIGTERM (or SIGINT) does to open sessions. */
    shutdown: Type.Object(
      {
        /**
         * 0: end every session at once (57P01). More: stop accepting connections, end each session
         * when it is next idle outside a transaction, and the ones still busy after this long. A
         * second signal ends them at once.
         */
        drainSeconds: Type.Integer({ minimum: 0, maximum: 24 * 3600, default: 0 }),
      },
      { ...strict, default: {} },
    ),
    resources: Type.Array(ResourceConfigSchema, { default: [], maxItems: 1000 }),
  },
  strict,
);

export type AgentConfig = Static<typeof AgentConfigSchema>;
export type ResourceConfig = Static<typeof ResourceConfigSchema>;
export type PostgresListenerConfig = Static<typeof PostgresListenerSchema>;
export type PostgresTargetConfig = Static<typeof PostgresTargetSchema>;

export const AGENT_ENV_OVERRIDES: EnvOverride[] = [
  { variable: "MOAT_AGENT_DATA_DIR", path: "dataDir", type: "string" },
  { variable: "MOAT_AGENT_LOG_LEVEL", path: "logLevel", type: "string" },
  { variable: "MOAT_AGENT_ENROLMENT_TOKEN", path: "enrolmentToken", type: "string" },
  { variable: "MOAT_AGENT_ENROLMENT_TOKEN_FILE", path: "enrolmentTokenFile", type: "string" },
  { variable: "MOAT_AGENT_CONTROL_PLANE", path: "controlPlane.address", type: "string" },
  { variable: "MOAT_AGENT_CONTROL_PLANE_CA_FILE", path: "controlPlane.caFile", type: "string" },
  { variable: "MOAT_AGENT_CONTROL_PLANE_PLAINTEXT", path: "controlPlane.plaintext", type: "boolean" },
  { variable: "MOAT_AGENT_ADMIN_PORT", path: "admin.port", type: "number" },
  { variable: "MOAT_AGENT_ADMIN_HOST", path: "admin.host", type: "string" },
  { variable: "MOAT_AGENT_DRAIN_SECONDS", path: "shutdown.drainSeconds", type: "number" },
];

export function loadAgentConfig(options: { file?: string; env?: NodeJS.ProcessEnv; cwd?: string }): AgentConfig {
  const env = options.env ?? process.env;
  const source = options.file ?? "defaults and environment";
  const raw = options.file ? readConfigFile(options.file) : {};
  const envProblems = applyEnvOverrides(raw, AGENT_ENV_OVERRIDES, env);
  if (envProblems.length > 0) throw new ConfigError(source, envProblems);
  const config = validateConfig(AgentConfigSchema, raw, source);
  const problems: string[] = [];
  const names = new Set<string>();
  config.resources.forEach((r, i) => {
    if (names.has(r.name)) problems.push(`resources.${i}.name: "${r.name}" is used twice`);
    names.add(r.name);
    if (r.type !== "postgres" && r.postgres) problems.push(`resources.${i}.postgres: only for postgres resources`);
    const t = r.postgres?.target;
    if (t && [t.password, t.passwordEnv, t.passwordFile].filter((x) => x !== undefined).length > 1)
      problems.push(`resources.${i}.postgres.target: set one of password, passwordEnv, passwordFile`);
    if (t && (t.sslmode === "verify-ca" || t.sslmode === "verify-full") && !t.caFile)
      problems.push(`resources.${i}.postgres.target.caFile: required with sslmode ${t.sslmode}`);
  });
  if (config.reconnect.maxDelayMs < config.reconnect.initialDelayMs) {
    problems.push("reconnect.maxDelayMs: must be >= reconnect.initialDelayMs");
  }
  if (config.enrolmentToken && config.enrolmentTokenFile) {
    problems.push("enrolmentToken and enrolmentTokenFile: set one, not both");
  }
  if (problems.length > 0) throw new ConfigError(source, problems);
  const cwd = options.cwd ?? process.cwd();
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(cwd, p));
  return {
    ...config,
    dataDir: abs(config.dataDir),
    ...(config.enrolmentTokenFile ? { enrolmentTokenFile: abs(config.enrolmentTokenFile) } : {}),
    resources: config.resources.map((r) => {
      const pg = r.postgres;
      if (!pg) return r;
      return {
        ...r,
        postgres: {
          ...pg,
          target: {
            ...pg.target,
            ...(pg.target.passwordFile ? { passwordFile: abs(pg.target.passwordFile) } : {}),
            ...(pg.target.caFile ? { caFile: abs(pg.target.caFile) } : {}),
          },
          ...(pg.tls ? { tls: { certFile: abs(pg.tls.certFile), keyFile: abs(pg.tls.keyFile) } } : {}),
        },
      };
    }),
    controlPlane: {
      ...config.controlPlane,
      ...(config.controlPlane.caFile ? { caFile: abs(config.controlPlane.caFile) } : {}),
    },
  };
}
