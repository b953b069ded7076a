/**
 * Configuration of the audit sinks (`audit.sinks` in the control-plane config): the schema, the
 * checks a schema cannot express, and resolution of secrets named by environment variable. The
 * control-plane config module calls `resolveAuditSinks` once at start; nothing here runs later.
 */
import { existsSync } from "node:fs";
import { Type, type Static } from "@sinclair/typebox";

const strict = { additionalProperties: false } as const;
const SinkName = Type.String({ pattern: "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", maxLength: 63 });
const EnvName = Type.String({ pattern: "^[A-Za-z_][A-Za-z0-9_]*$" });

/** Delivery knobs every sink has. */
const delivery = {
  /** Most events per delivery (one POST, or one run of publishes). */
  batchSize: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
  /** Time allowed for one delivery (HTTP request, or each JetStream publish acknowledgement). */
  timeoutMs: Type.Integer({ minimum: 100, maximum: 300_000, default: 10_000 }),
  /** First retry delay; each failed attempt doubles it (with jitter) up to maxBackoffMs. */
  minBackoffMs: Type.Integer({ minimum: 10, maximum: 60_000, default: 500 }),
  maxBackoffMs: Type.Integer({ minimum: 10, maximum: 3_600_000, default: 60_000 }),
  /** Where a sink that has never delivered starts: every stored event, or only events stored from now on. */
  startFrom: Type.Union([Type.Literal("earliest"), Type.Literal("latest")], { default: "earliest" }),
};

export const WebhookSinkSchema = Type.Object(
  {
    name: SinkName,
    /** http:// or https:// endpoint; no user:password@ (use headers). */
    url: Type.String({ minLength: 8 }),
    /** HMAC-SHA256 key for Moat-Signature: the name of an environment variable holding it ... */
    secretEnv: Type.Optional(EnvName),
    /** ... or a file holding it (read at every delivery, so the key can be rotated in place). */
    secretFile: Type.Optional(Type.String({ minLength: 1 })),
    /** Extra request headers (for example a SIEM's collector token). Moat-* and Content-* are reserved. */
    headers: Type.Optional(Type.Record(Type.String({ pattern: "^[A-Za-z0-9-]+$" }), Type.String())),
    /** Extra request headers whose values come from environment variables (header name -> variable name). */
    headersEnv: Type.Optional(Type.Record(Type.String({ pattern: "^[A-Za-z0-9-]+$" }), EnvName)),
    /** PEM CA bundle to verify an https endpoint with, instead of the system's. Verification is never off. */
    caFile: Type.Optional(Type.String({ minLength: 1 })),
    /** A batch is cut so that its JSON body stays under this (one event is always sent). */
    maxBodyBytes: Type.Integer({ minimum: 4096, maximum: 64 * 1024 * 1024, default: 1024 * 1024 }),
    ...delivery,
  },
  strict,
);

export const NatsSinkSchema = Type.Object(
  {
    /** nats:// or tls:// URLs (host:port also works). */
    servers: Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }),
    stream: Type.String({ pattern: "^[A-Za-z0-9_-]+$", default: "MOAT_AUDIT" }),
    subjectPrefix: Type.String({ pattern: "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$", default: "moat.audit" }),
    /** Create the stream (subjects `<subjectPrefix>.>`, file storage) when it does not exist. */
    createStream: Type.Boolean({ default: true }),
    /** The created stream's deduplication window (JetStream drops a re-published message id within it). */
    duplicateWindowSeconds: Type.Integer({ minimum: 1, maximum: 7 * 24 * 3600, default: 600 }),
    /** Credentials: user + passwordEnv, or tokenEnv, or credsFile (NATS decentralised auth), or none. */
    user: Type.Optional(Type.String({ minLength: 1 })),
    passwordEnv: Type.Optional(EnvName),
    tokenEnv: Type.Optional(EnvName),
    credsFile: Type.Optional(Type.String({ minLength: 1 })),
    tls: Type.Optional(
      Type.Object(
        {
          caFile: Type.Optional(Type.String({ minLength: 1 })),
          certFile: Type.Optional(Type.String({ minLength: 1 })),
          keyFile: Type.Optional(Type.String({ minLength: 1 })),
        },
        strict,
      ),
    ),
    /**
     * Publishes awaiting their acknowledgement at once. 1 (default) keeps the stream in event order
     * even when the connection drops mid-batch; more is faster but such a drop can reorder the stream.
     */
    maxInFlight: Type.Integer({ minimum: 1, maximum: 1000, default: 1 }),
    ...delivery,
    timeoutMs: Type.Integer({ minimum: 100, maximum: 300_000, default: 5000 }),
  },
  strict,
);

export const AuditSinksSchema = Type.Object(
  {
    webhooks: Type.Array(WebhookSinkSchema, { default: [] }),
    nats: Type.Optional(NatsSinkSchema),
    /** How often an idle sink looks for new events (ingestion on this replica also wakes it at once). */
    pollMs: Type.Integer({ minimum: 20, maximum: 60_000, default: 500 }),
    /** A replica delivers a sink while it holds the sink's lease; another takes over this long after it stops renewing. */
    leaseSeconds: Type.Integer({ minimum: 2, maximum: 600, default: 15 }),
    /**
     * A missing sequence number in one agent's events is waited for this long before the sink moves
     * past it (such a gap is permanent: events dropped by the agent's drop-oldest spool, or deleted
     * by retention before delivery). Counted and logged.
     */
    gapGraceSeconds: Type.Integer({ minimum: 0, maximum: 24 * 3600, default: 60 }),
  },
  { ...strict, default: {} },
);

export type WebhookSinkConfig = Static<typeof WebhookSinkSchema>;
export type NatsSinkConfig = Static<typeof NatsSinkSchema>;
export type AuditSinksConfig = Static<typeof AuditSinksSchema>;

/** A webhook sink with paths made absolute and its env secret and env headers read (into `headers`). */
export type ResolvedWebhookSink = Omit<WebhookSinkConfig, "secretEnv" | "headersEnv"> & { secret?: string };
/** The NATS sink with paths made absolute and its env credentials read. */
export type ResolvedNatsSink = Omit<NatsSinkConfig, "passwordEnv" | "tokenEnv"> & { password?: string; token?: string };
export type ResolvedAuditSinks = Omit<AuditSinksConfig, "webhooks" | "nats"> & {
  webhooks: ResolvedWebhookSink[];
  nats?: ResolvedNatsSink;
};

const RESERVED_HEADER = /^(moat-.*|content-.*|host|transfer-encoding|connection|user-agent)$/i;

/**
 * Checks what the schema cannot (URLs, one secret source, reserved headers, unique names, files
 * that must exist), reads the secrets named by environment variables from `env`, and makes paths
 * absolute with `abs`. Returns the resolved sinks and every problem found.
 */
export function resolveAuditSinks(
  sinks: AuditSinksConfig,
  env: NodeJS.ProcessEnv,
  abs: (path: string) => string,
): { sinks: ResolvedAuditSinks; problems: string[] } {
  const problems: string[] = [];
  const seen = new Set<string>();
  const file = (field: string, path: string | undefined): string | undefined => {
    if (path === undefined) return undefined;
    const full = abs(path);
    if (!existsSync(full)) problems.push(`${field}: ${full} does not exist`);
    return full;
  };
  const secretFromEnv = (field: string, name: string | undefined): string | undefined => {
    if (name === undefined) return undefined;
    const value = env[name];
    if (!value) problems.push(`${field}: the environment variable ${name} is not set`);
    return value || undefined;
  };

  const webhooks = sinks.webhooks.map((hook, i): ResolvedWebhookSink => {
    const at = `audit.sinks.webhooks.${i}`;
    if (seen.has(hook.name)) problems.push(`${at}.name: another webhook is named ${hook.name}`);
    seen.add(hook.name);
    let url: URL | undefined;
    try {
      url = new URL(hook.url);
    } catch {
      problems.push(`${at}.url: not a URL`);
    }
    if (url && url.protocol !== "http:" && url.protocol !== "https:")
      problems.push(`${at}.url: only http:// and https:// URLs are supported`);
    if (url && (url.username || url.password))
      problems.push(`${at}.url: put credentials in headers, not in the URL (URLs may be logged)`);
    if ((hook.secretEnv === undefined) === (hook.secretFile === undefined))
      problems.push(`${at}: set exactly one of secretEnv and secretFile (the HMAC signing key)`);
    for (const name of Object.keys(hook.headers ?? {}))
      if (RESERVED_HEADER.test(name)) problems.push(`${at}.headers.${name}: this header is set by Moat`);
    const headers: Record<string, string> = { ...hook.headers };
    for (const [name, variable] of Object.entries(hook.headersEnv ?? {})) {
      if (RESERVED_HEADER.test(name)) problems.push(`${at}.headersEnv.${name}: this header is set by Moat`);
      const value = secretFromEnv(`${at}.headersEnv.${name}`, variable);
      if (value !== undefined) headers[name] = value;
    }
    if (hook.caFile !== undefined && url?.protocol !== "https:")
      problems.push(`${at}.caFile: only meaningful for an https:// URL`);
    if (hook.minBackoffMs > hook.maxBackoffMs) problems.push(`${at}.minBackoffMs: larger than maxBackoffMs`);
    const { secretEnv, headersEnv: _headersEnv, ...rest } = hook;
    const secret = secretFromEnv(`${at}.secretEnv`, secretEnv);
    const secretFile = file(`${at}.secretFile`, hook.secretFile);
    const caFile = file(`${at}.caFile`, hook.caFile);
    return {
      ...rest,
      ...(Object.keys(headers).length > 0 ? { headers } : {}),
      ...(secret !== undefined ? { secret } : {}),
      ...(secretFile !== undefined ? { secretFile } : {}),
      ...(caFile !== undefined ? { caFile } : {}),
    };
  });

  let nats: ResolvedNatsSink | undefined;
  if (sinks.nats) {
    const at = "audit.sinks.nats";
    const n = sinks.nats;
    const methods = [n.passwordEnv !== undefined, n.tokenEnv !== undefined, n.credsFile !== undefined].filter(Boolean);
    if (methods.length > 1) problems.push(`${at}: set at most one of passwordEnv (with user), tokenEnv and credsFile`);
    if ((n.user === undefined) !== (n.passwordEnv === undefined))
      problems.push(`${at}: user and passwordEnv go together`);
    if (n.tls && (n.tls.certFile === undefined) !== (n.tls.keyFile === undefined))
      problems.push(`${at}.tls: certFile and keyFile go together`);
    if (n.minBackoffMs > n.maxBackoffMs) problems.push(`${at}.minBackoffMs: larger than maxBackoffMs`);
    n.servers.forEach((server, j) => {
      if (server.includes("@"))
        problems.push(`${at}.servers.${j}: put credentials in user/passwordEnv, tokenEnv or credsFile, not in the URL`);
    });
    const { passwordEnv, tokenEnv, ...rest } = n;
    const password = secretFromEnv(`${at}.passwordEnv`, passwordEnv);
    const token = secretFromEnv(`${at}.tokenEnv`, tokenEnv);
    const credsFile = file(`${at}.credsFile`, n.credsFile);
    const tls = n.tls
      ? Object.fromEntries(
          Object.entries(n.tls).map(([k, v]) => [k, file(`${at}.tls.${k}`, v as string | undefined)] as const),
        )
      : undefined;
    nats = {
      ...rest,
      ...(password !== undefined ? { password } : {}),
      ...(token !== undefined ? { token } : {}),
      ...(credsFile !== undefined ? { credsFile } : {}),
      ...(tls ? { tls } : {}),
    };
  }
  return { sinks: { ...sinks, webhooks, ...(nats ? { nats } : {}) }, problems };
}
