/**
 * Control-plane configuration: schema, defaults, environment overrides. Validated once in main.ts
 * and passed down explicitly; nothing else reads process.env.
 */
import { isAbsolute, join, resolve } from "node:path";
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
import { AuditSinksSchema, resolveAuditSinks, type ResolvedAuditSinks } from "./audit-sinks/config.js";

const Port = Type.Integer({ minimum: 0, maximum: 65535 });
const strict = { additionalProperties: false } as const;

export const ControlPlaneConfigSchema = Type.Object(
  {
    /** Where the SQLite store, the CA and the signing keys live. */
    dataDir: Type.String({ minLength: 1, default: ".moat/control-plane" }),
    logLevel: LogLevelSchema,
    /** SQLite `file:PATH` (default: `file:<dataDir>/moat.db`) or `postgresql://...`. */
    databaseUrl: Type.Optional(Type.String({ minLength: 1 })),
    http: Type.Object(
      {
        host: Type.String({ default: "127.0.0.1" }),
        port: Type.Intersect([Port], { default: 7070 }),
        /** Largest accepted request body. */
        bodyLimitBytes: Type.Integer({ minimum: 1024, default: 1024 * 1024 }),
      },
      { ...strict, default: {} },
    ),
    grpc: Type.Object(
      {
        host: Type.String({ default: "127.0.0.1" }),
        port: Type.Intersect([Port], { default: 7071 }),
        /** host:port agents dial; goes into enrolment tokens. Default: host:port above. */
        advertiseAddress: Type.Optional(Type.String({ minLength: 3 })),
        /** Serve without TLS. Refused unless `host` is a loopback address. */
        plaintext: Type.Boolean({ default: false }),
        /** Extra DNS names / IPs for the generated server certificate. */
        subjectAltNames: Type.Array(Type.String({ minLength: 1 }), { default: [] }),
        /** Operator-provided certificate and key (PEM files) instead of the generated ones. */
        certFile: Type.Optional(Type.String()),
        keyFile: Type.Optional(Type.String()),
        /** CA that signed certFile (what agents pin); required with certFile. */
        caFile: Type.Optional(Type.String()),
        maxMessageBytes: Type.Integer({ minimum: 64 * 1024, default: DEFAULT_MAX_MESSAGE_BYTES }),
        heartbeatSeconds: Type.Integer({ minimum: 1, maximum: 300, default: 10 }),
      },
      { ...strict, default: {} },
    ),
    bundles: Type.Object(
      {
        /** An agent that has heard nothing for this long stops trusting its bundle and denies everything. */
        validitySeconds: Type.Integer({ minimum: 60, default: 24 * 3600 }),
        /**
         * After a bundle-key rotation, how long the older keys stay published and usable. An agent
         * that reconnects later than this after the rotation must be re-enrolled.
         */
        keyGraceSeconds: Type.Integer({ minimum: 1, default: 7 * 24 * 3600 }),
      },
      { ...strict, default: {} },
    ),
    tokens: Type.Object(
      {
        /** `iss` of access tokens; agents require it. */
        issuer: Type.String({ minLength: 1, default: "moat" }),
        /** `aud` of access tokens for agents (what users present to resources); agents require it. */
        audience: Type.String({ minLength: 1, default: "moat-agents" }),
        /** `aud` of access tokens for the REST API (logins); agents refuse them, and REST refuses agent tokens. */
        apiAudience: Type.String({ minLength: 1, default: "moat-api" }),
        /** Lifetime of an access token. */
        ttlSeconds: Type.Integer({ minimum: 60, maximum: 24 * 3600, default: 900 }),
        /** After a key rotation, how long the new key is published to agents before it signs tokens. */
        keyActivationSeconds: Type.Integer({ minimum: 0, maximum: 3600, default: 10 }),
      },
      { ...strict, default: {} },
    ),
    /** Federated login through an OpenID Connect issuer (optional). */
    oidc: Type.Optional(
      Type.Object(
        {
          issuer: Type.String({ minLength: 1, description: "Issuer URL, exactly as in its discovery document" }),
          clientId: Type.String({
            minLength: 1,
            description: "Public client (PKCE) the CLI uses; ID tokens must be addressed to it",
          }),
          scopes: Type.Array(Type.String(), { default: ["openid", "email", "profile", "groups"] }),
          emailClaim: Type.String({ default: "email" }),
          groupsClaim: Type.String({ default: "groups" }),
          groupMapping: Type.Optional(Type.Record(Type.String(), Type.String())),
          defaultRole: Type.Union(
            ["admin", "auditor", "reviewer", "member"].map((r) => Type.Literal(r)),
            { default: "member" },
          ),
          allowedEmailDomains: Type.Optional(Type.Array(Type.String({ minLength: 1 }))),
          syncGroups: Type.Boolean({ default: true }),
          /** Require `email_verified: true` in ID tokens; turn off only for issuers that never send it. */
          requireVerifiedEmail: Type.Boolean({ default: true }),
          /** Least time between two fetches of the issuer's keys (a token with an unknown key triggers one). */
          jwksRefreshCooldownSeconds: Type.Integer({ minimum: 0, maximum: 3600, default: 30 }),
        },
        strict,
      ),
    ),
    enrolment: Type.Object(
      {
        /** How long a new enrolment token stays valid. */
        tokenTtlSeconds: Type.Integer({ minimum: 60, default: 24 * 3600 }),
      },
      { ...strict, default: {} },
    ),
    bootstrap: Type.Object(
      {
        /** Email of the admin user created on first start. */
        adminEmail: Type.String({ minLength: 3, default: "admin@moat.local" }),
        /**
         * When set, the first-start admin API key is written to this file (mode 0600) instead of
         * being printed. For automation; the store keeps only its hash either way.
         */
        adminKeyFile: Type.Optional(Type.String()),
      },
      { ...strict, default: {} },
    ),
    /** Create (once) an agent record for an agent started beside the control plane (`npm start`). */
    localAgent: Type.Object(
      {
        enabled: Type.Boolean({ default: false }),
        name: Type.String({ minLength: 1, default: "local" }),
      },
      { ...strict, default: {} },
    ),
    audit: Type.Object(
      {
        /** Where stored audit events are also delivered: signed webhooks, NATS JetStream (docs/audit.md). */
        sinks: AuditSinksSchema,
        /** How long stored audit events are kept (docs/audit.md). Nothing is deleted unless a limit is set. */
        retention: Type.Object(
          {
            /** Delete events older than this many days. */
            days: Type.Optional(Type.Integer({ minimum: 1, maximum: 36_500 })),
            /** Keep about this many events at most, the newest; older ones are deleted. */
            maxEvents: Type.Optional(Type.Integer({ minimum: 1 })),
            /** Keep the audit data under about this many bytes (SQLite: exact, PostgreSQL: estimated), deleting the oldest events. */
            maxBytes: Type.Optional(Type.Integer({ minimum: 1024 * 1024 })),
            /** Minutes between retention runs (one also runs at start). */
            intervalMinutes: Type.Integer({ minimum: 1, maximum: 24 * 60, default: 60 }),
            /** Events deleted per transaction. */
            batchSize: Type.Integer({ minimum: 100, maximum: 100_000, default: 5000 }),
            /** Keep events a configured audit sink has not delivered yet, whatever their age. */
            holdForSinks: Type.Boolean({ default: true }),
          },
          { ...strict, default: {} },
        ),
      },
      { ...strict, default: {} },
    ),
    /** How often a replica checks the shared store for changes made on other replicas (ms). */
    replicaPollMs: Type.Integer({ minimum: 100, maximum: 60_000, default: 1000 }),
    /** Identifies this replica in agent status ("connected to"). Default: hostname:pid. */
    replicaId: Type.Optional(Type.String()),
  },
  strict,
);

type ConfigShape = Static<typeof ControlPlaneConfigSchema>;

export type ControlPlaneConfig = Omit<ConfigShape, "audit"> & {
  databaseUrl: string;
  /** Audit sinks with paths made absolute and the secrets they name by environment variable read. */
  audit: Omit<ConfigShape["audit"], "sinks"> & { sinks: ResolvedAuditSinks };
};

export const ENV_OVERRIDES: EnvOverride[] = [
  { variable: "MOAT_DATA_DIR", path: "dataDir", type: "string" },
  { variable: "MOAT_LOG_LEVEL", path: "logLevel", type: "string" },
  { variable: "DATABASE_URL", path: "databaseUrl", type: "string" },
  { variable: "MOAT_HTTP_HOST", path: "http.host", type: "string" },
  { variable: "MOAT_HTTP_PORT", path: "http.port", type: "number" },
  { variable: "MOAT_GRPC_HOST", path: "grpc.host", type: "string" },
  { variable: "MOAT_GRPC_PORT", path: "grpc.port", type: "number" },
  { variable: "MOAT_GRPC_ADVERTISE_ADDRESS", path: "grpc.advertiseAddress", type: "string" },
  { variable: "MOAT_GRPC_PLAINTEXT", path: "grpc.plaintext", type: "boolean" },
  { variable: "MOAT_GRPC_SUBJECT_ALT_NAMES", path: "grpc.subjectAltNames", type: "list" },
  { variable: "MOAT_GRPC_MAX_MESSAGE_BYTES", path: "grpc.maxMessageBytes", type: "number" },
  { variable: "MOAT_GRPC_HEARTBEAT_SECONDS", path: "grpc.heartbeatSeconds", type: "number" },
  { variable: "MOAT_BOOTSTRAP_ADMIN_EMAIL", path: "bootstrap.adminEmail", type: "string" },
  { variable: "MOAT_BOOTSTRAP_ADMIN_KEY_FILE", path: "bootstrap.adminKeyFile", type: "string" },
  { variable: "MOAT_LOCAL_AGENT", path: "localAgent.enabled", type: "boolean" },
  { variable: "MOAT_REPLICA_ID", path: "replicaId", type: "string" },
  { variable: "MOAT_BUNDLE_VALIDITY_SECONDS", path: "bundles.validitySeconds", type: "number" },
  { variable: "MOAT_BUNDLE_KEY_GRACE_SECONDS", path: "bundles.keyGraceSeconds", type: "number" },
  { variable: "MOAT_TOKEN_KEY_ACTIVATION_SECONDS", path: "tokens.keyActivationSeconds", type: "number" },
  { variable: "MOAT_AUDIT_RETENTION_DAYS", path: "audit.retention.days", type: "number" },
  { variable: "MOAT_AUDIT_RETENTION_MAX_EVENTS", path: "audit.retention.maxEvents", type: "number" },
  { variable: "MOAT_AUDIT_RETENTION_MAX_BYTES", path: "audit.retention.maxBytes", type: "number" },
  { variable: "MOAT_OIDC_ISSUER", path: "oidc.issuer", type: "string" },
  { variable: "MOAT_OIDC_CLIENT_ID", path: "oidc.clientId", type: "string" },
];

const LOOPBACK = new Set(["127.0.0.1", "::1", "localhost"]);

/** True for loopback host names and addresses. */
export function isLoopback(host: string): boolean {
  return LOOPBACK.has(host) || host.startsWith("127.");
}

/**
 * Builds the config from an optional YAML file and the environment. Relative paths resolve from
 * `cwd`. Throws ConfigError naming every bad field.
 */
export function loadControlPlaneConfig(options: {
  file?: string;
  env?: NodeJS.ProcessEnv;
  overrides?: Record<string, unknown>;
  cwd?: string;
}): ControlPlaneConfig {
  const env = options.env ?? process.env;
  const raw: Record<string, unknown> = options.file ? readConfigFile(options.file) : {};
  Object.assign(raw, options.overrides ?? {});
  const envProblems = applyEnvOverrides(raw, ENV_OVERRIDES, env);
  const source = options.file ?? "defaults and environment";
  if (envProblems.length > 0) throw new ConfigError(source, envProblems);
  const config = validateConfig(ControlPlaneConfigSchema, raw, source);

  const cwd = options.cwd ?? process.cwd();
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(cwd, p));
  const dataDir = abs(config.dataDir);
  const problems: string[] = [];
  if (config.grpc.plaintext && !isLoopback(config.grpc.host)) {
    problems.push("grpc.plaintext: only allowed when grpc.host is a loopback address");
  }
  const tlsFiles = [config.grpc.certFile, config.grpc.keyFile, config.grpc.caFile].filter(Boolean).length;
  if (tlsFiles !== 0 && tlsFiles !== 3) {
    problems.push("grpc.certFile, grpc.keyFile and grpc.caFile: set all three or none");
  }
  const sinks = resolveAuditSinks(config.audit.sinks, env, abs);
  problems.push(...sinks.problems);
  if (problems.length > 0) throw new ConfigError(source, problems);
  return {
    ...config,
    audit: { ...config.audit, sinks: sinks.sinks },
    dataDir,
    databaseUrl: config.databaseUrl ?? `file:${join(dataDir, "moat.db")}`,
    grpc: {
      ...config.grpc,
      certFile: config.grpc.certFile && abs(config.grpc.certFile),
      keyFile: config.grpc.keyFile && abs(config.grpc.keyFile),
      caFile: config.grpc.caFile && abs(config.grpc.caFile),
    },
    bootstrap: {
      ...config.bootstrap,
      adminKeyFile: config.bootstrap.adminKeyFile && abs(config.bootstrap.adminKeyFile),
    },
  };
}
