/**
 * The Postgres listener of one resource: connection set-up in the protocol's own terms (SSLRequest
 * -> TLS, direct TLS with ALPN `postgresql`, GSSENCRequest refused, CancelRequest routed through the
 * agent's own keys), authentication of the user's access token (sent as the password), the
 * `connect` decision, the agent's own login to the target, then a PgSession.
 */
import { createServer, isIP, type Server, type Socket } from "node:net";
import { TLSSocket, createSecureContext, type SecureContext } from "node:tls";
import { randomInt, timingSafeEqual } from "node:crypto";
import { getHeapStatistics } from "node:v8";
import {
  authenticationRequest,
  backendKeyData,
  CANCEL_REQUEST_CODE,
  decodeInitial,
  decodePassword,
  errorResponse,
  FrameReader,
  negotiateProtocolVersion,
  ProtocolError,
  readyForQuery,
  SIMPLE_MESSAGES,
} from "@moat/pg-wire";
import { SECRET_WORDS, type Classifier, type ClassifierPool } from "@moat/sql";
import { ACTIONS } from "@moat/policy";
import { createUlidFactory, type Logger } from "@moat/common";
import { Verdict as ProtoVerdict } from "@moat/proto";
import type { BundleHolder } from "../bundle.js";
import type { AuditRecorder } from "../audit/recorder.js";
import { SpoolFullError } from "../audit/spool.js";
import type { PostgresListenerConfig } from "../config.js";
import { TokenRejected, verifyAccessToken, type VerifiedIdentity } from "../tokens.js";
import { cancelOnTarget, connectTarget, TargetError } from "./target.js";
import { CatalogCache } from "./catalog.js";
import { isSafeEncoding, PgSession, type SessionMetrics } from "./session.js";

/** Startup parameters passed on to the target; anything else is dropped (or refused below). */
const PASSED_PARAMETERS = new Set([
  "application_name",
  "client_encoding",
  "datestyle",
  "timezone",
  "extra_float_digits",
  "intervalstyle",
  "search_path",
  "lc_monetary",
  "lc_numeric",
  "lc_time",
  "bytea_output",
  "statement_timeout",
  "lock_timeout",
  "idle_in_transaction_session_timeout",
]);

export interface PgListenerOptions {
  resource: string;
  listen: string;
  config: PostgresListenerConfig;
  tls: { certPem: string; keyPem: string };
  bundles: BundleHolder;
  audit: AuditRecorder;
  classifier: Classifier;
  /** Classifies long texts off the event loop (config.parseOffThreadBytes says from what length). */
  classifierPool?: ClassifierPool;
  logger: Logger;
  metrics: {
    sessions: { inc(): void; dec(): void };
    statement: SessionMetrics["statement"];
    refused(reason: string): void;
  };
}

export interface PgListener {
  port: number;
  address: string;
  sessions(): number;
  /**
   * Decides again for every live session under the current bundle (after a new one is applied): a
   * session of a revoked token or a disabled user, or one no rule lets connect any more, is ended
   * (with the rule's message), one whose user may now only read is ended to reconnect read-only, and
   * a maximum session length the bundle sets now applies to sessions already open. Returns how many
   * ended.
   */
  recheck(): number;
  /**
   * Stops listening and ends every session (57P01). With `drainMs`, a session is first left to
   * finish what it runs: each is ended at its next quiet point (idle, outside a transaction; at
   * once if it is), and those still busy after `drainMs` are ended then. A later call (a second
   * signal) with a shorter wait cuts the first one's short.
   */
  close(options?: { drainMs?: number }): Promise<void>;
}

interface LiveSession {
  identity: VerifiedIdentity;
  source: string;
  started: number;
  /** Started read-only (default_transaction_read_only = on: readOnlySessions). */
  readOnly: boolean;
  /** The maximum length in force (the timer ends the session then). */
  maxSeconds: number | undefined;
  timer: NodeJS.Timeout | undefined;
}

interface CancelKey {
  secretKey: number;
  targetProcessId: number;
  targetSecretKey: number;
}

function splitHostPort(listen: string): { host: string; port: number } {
  const i = listen.lastIndexOf(":");
  return { host: listen.slice(0, i).replace(/^\[|\]$/g, ""), port: Number(listen.slice(i + 1)) };
}

function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  return address === "::1" || address.startsWith("127.") || address.startsWith("::ffff:127.");
}

/**
 * Longest SQL text parsed when the configuration says nothing: 16 Mi characters, or less where the
 * heap limit is under 1 GiB. A parse tree takes up to ~50 bytes of heap per character (an IN list
 * of 10 MiB passed under a 512 MiB limit, one of 20 MiB did not), and V8 aborts the whole process
 * when a worker reaches the limit while parsing.
 */
const DEFAULT_MAX_STATEMENT_LENGTH = Math.max(
  64 * 1024,
  Math.min(16 * 1024 * 1024, Math.floor(getHeapStatistics().heap_size_limit / 64)),
);

/** Cancel requests passed on to the target at once, at most (each is a connection to it). */
const MAX_CANCELS_IN_FLIGHT = 64;

/** How long a refused connection may take to read its error before it is closed. */
const REFUSE_GRACE_MS = 2_000;

const clientAddress = (s: Socket) => (s.remoteAddress ?? "").replace(/^::ffff:/, "");

/** Every database action that can change something: all but db:read and db:copy-out (new ones count). */
const CHANGING_ACTIONS = ACTIONS.filter((a) => a.startsWith("db:") && a !== "db:read" && a !== "db:copy-out");

function mayChange(bundles: BundleHolder, identity: VerifiedIdentity, resource: string): boolean {
  return CHANGING_ACTIONS.some((action) =>
    bundles.mayAllow({
      user: identity.user,
      groups: identity.groups,
      serviceAccount: identity.serviceAccount,
      resource,
      action,
    }),
  );
}

export async function startPgListener(options: PgListenerOptions): Promise<PgListener> {
  const { config, logger } = options;
  const secureContext: SecureContext = createSecureContext({ cert: options.tls.certPem, key: options.tls.keyPem });
  const cancelKeys = new Map<number, CancelKey>();
  /** Target backend process IDs of live sessions -> the process IDs their clients were given. */
  const clientPids = new Map<number, number>();
  let cancelsInFlight = 0;
  // Result columns' tables, for masking (a connection of the agent's own per database, on demand).
  const catalog = new CatalogCache({
    open: (database) =>
      connectTarget({ target: config.target, database, parameters: { application_name: "moat-agent (catalog)" } }),
  });
  /** Live sessions, with what their `connect` is decided on again when the bundle changes. */
  const live = new Map<PgSession, LiveSession>();
  /** Set once close() has begun: new sessions are refused, those whose set-up completes drained at once. */
  let stopping = false;
  /** Ends a drain's wait: the last live session has ended, or a second close wants no wait. */
  let drained: () => void = () => undefined;
  /** Connections not yet sessions: each refuses itself (57P03) unless it is authenticating. */
  const setups = new Set<() => void>();
  let serverClosed: Promise<void> | undefined;
  const ulid = createUlidFactory();
  let count = 0;
  const tooManySessions = `too many sessions on ${options.resource} (at most ${config.maxSessions})`;
  /**
   * Connections accepted and not yet sessions (TLS, startup, authentication, the target's login),
   * at most maxSessions: each holds buffers until its authentication times out.
   */
  let connecting = 0;
  /**
   * Of those, the ones past their startup packet: each holds a session's place, so that sessions
   * authenticating at once cannot take more than maxSessions (review 36: counted only once open,
   * six at once got in past a limit of two). A CancelRequest takes none.
   */
  let reserved = 0;
  /** Where one connection stands in those counts. */
  interface Slot {
    state: "connecting" | "reserved" | "session" | "gone";
  }
  const reserve = (slot: Slot): boolean => {
    if (count + reserved >= config.maxSessions) return false;
    reserved++;
    slot.state = "reserved";
    return true;
  };
  /** The connection is now a session (counted in `count` until it ends). */
  const promote = (slot: Slot) => {
    if (slot.state === "reserved") reserved--;
    if (slot.state === "reserved" || slot.state === "connecting") connecting--;
    slot.state = "session";
    count++;
  };
  /** The connection closed before it became a session. */
  const release = (slot: Slot) => {
    if (slot.state === "reserved") reserved--;
    if (slot.state === "reserved" || slot.state === "connecting") connecting--;
    if (slot.state !== "session") slot.state = "gone";
  };

  const refuse = (socket: Socket, code: string, message: string, reason: string) => {
    options.metrics.refused(reason);
    socket.end(errorResponse({ severity: "FATAL", code, message }));
    socket.destroySoon();
    // A peer that reads nothing, or a TLS handshake that never completed (the error cannot be sent
    // before it does), must not keep the connection: review 57 saw such sockets, and their set-up
    // places, held for good.
    setTimeout(() => socket.destroy(), REFUSE_GRACE_MS).unref();
  };

  const tooManyConnecting = `too many connections being set up on ${options.resource} (at most ${config.maxSessions})`;
  /**
   * Past the cap on connections in set-up, only a CancelRequest is read (its 16 bytes, within a
   * second): a peer holding every set-up place open cannot keep users from cancelling their
   * queries (review 38). Anything else is refused at once.
   */
  const cancelOnly = (raw: Socket) => {
    let head = Buffer.alloc(0);
    const timer = setTimeout(() => refuse(raw, "53300", tooManyConnecting, "max-connecting"), 1_000);
    raw.on("close", () => clearTimeout(timer));
    raw.on("data", (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      if (head.length < 8) return;
      const isCancel = head.readInt32BE(0) === 16 && head.readInt32BE(4) === CANCEL_REQUEST_CODE;
      if (isCancel && head.length < 16) return;
      clearTimeout(timer);
      raw.removeAllListeners("data");
      const m = isCancel && head.length === 16 ? decodeInitial(head.subarray(4)) : undefined;
      if (m?.kind === "cancel") {
        void cancel(m.processId, m.secretKey).finally(() => raw.destroy());
      } else refuse(raw, "53300", tooManyConnecting, "max-connecting");
    });
  };

  const handle = (raw: Socket) => {
    raw.setNoDelay(true);
    raw.on("error", () => raw.destroy());
    if (connecting >= config.maxSessions) {
      cancelOnly(raw);
      return;
    }
    connecting++;
    const slot: Slot = { state: "connecting" };
    const source = clientAddress(raw);
    const reader = new FrameReader(64 * 1024);
    let socket: Socket = raw;
    let tls = false;
    let stage: "initial" | "password" | "busy" = "initial";
    let startup: Map<string, string> | undefined;
    let gssAsked = false;
    const timer = setTimeout(
      () => refuse(socket, "08006", "authentication timed out", "timeout"),
      config.setupTimeoutMs,
    );

    const upgrade = (head?: Buffer) => {
      socket.off("data", onData);
      if (head && head.length > 0) socket.unshift(head);
      // A TLS socket takes allowHalfOpen from the socket it wraps: not half-open (review 64: a TLS
      // client closing during set-up was never let go, and held its set-up place).
      socket.allowHalfOpen = false;
      const t = new TLSSocket(socket, { isServer: true, secureContext, ALPNProtocols: ["postgresql"] });
      t.on("error", () => t.destroy());
      // The TLS socket owns the connection from now on: its close is the connection's.
      t.on("close", () => {
        clearTimeout(timer);
        release(slot);
        raw.destroy();
      });
      t.on("data", onData);
      socket = t;
      tls = true;
    };

    const onData = (chunk: Buffer) => {
      try {
        if (stage === "initial" && !tls && reader.buffered === 0 && chunk[0] === 0x16) {
          // A TLS ClientHello straight away (sslnegotiation=direct).
          upgrade(chunk);
          return;
        }
        reader.push(chunk);
        while (stage === "initial") {
          const payload = reader.nextInitial();
          if (!payload) return;
          const m = decodeInitial(payload);
          if (m.kind === "ssl") {
            if (tls) throw new ProtocolError("SSL request on an encrypted connection");
            if (reader.buffered > 0) throw new ProtocolError("data after the SSL request");
            socket.write(SIMPLE_MESSAGES.sslYes);
            upgrade();
            return;
          }
          if (m.kind === "gssenc") {
            // Once, before TLS, as PostgreSQL allows it (review 36: answered again and again).
            if (tls || gssAsked) throw new ProtocolError("GSSAPI encryption was already asked for or TLS is on");
            gssAsked = true;
            socket.write(SIMPLE_MESSAGES.sslNo);
            continue;
          }
          if (m.kind === "cancel") {
            clearTimeout(timer);
            void cancel(m.processId, m.secretKey).finally(() => socket.destroy());
            return;
          }
          // Stopping: the sessions still open may be cancelled (above), no new one starts (as
          // PostgreSQL answers during a shutdown).
          if (stopping) {
            stopSetup();
            return;
          }
          if (!reserve(slot)) {
            clearTimeout(timer);
            refuse(socket, "53300", tooManySessions, "max-sessions");
            return;
          }
          startup = m.parameters;
          reader.initial = false;
          stage = "password";
          const problem = checkStartup(m.parameters);
          if (problem) {
            clearTimeout(timer);
            refuse(socket, problem.code, problem.message, "startup");
            return;
          }
          // Like PostgreSQL 15: protocol 3.0 only, and no protocol options (`_pq_.*`), said before
          // authentication to a client that asked for a newer minor version or for options.
          const options = [...m.parameters.keys()].filter((k) => k.startsWith("_pq_."));
          if ((m.version & 0xffff) !== 0 || options.length > 0) {
            socket.write(negotiateProtocolVersion(3 << 16, options));
            for (const k of options) m.parameters.delete(k);
          }
          if (
            !tls &&
            config.plaintextAuth !== "always" &&
            !(config.plaintextAuth === "loopback" && isLoopback(source))
          ) {
            clearTimeout(timer);
            refuse(
              socket,
              "28000",
              "Moat requires TLS to send an access token: connect with sslmode=require (or stronger)",
              "no-tls",
            );
            return;
          }
          socket.write(authenticationRequest(3));
        }
        if (stage === "password") {
          const f = reader.next();
          if (!f) return;
          if (f.type !== 0x70) throw new ProtocolError("expected a password message");
          stage = "busy";
          socket.off("data", onData);
          socket.pause();
          clearTimeout(timer);
          void authenticate(
            socket,
            startup as Map<string, string>,
            decodePassword(f.body),
            source,
            reader.drain(),
            slot,
          );
        }
      } catch (error) {
        clearTimeout(timer);
        const e = error instanceof ProtocolError ? error : new ProtocolError((error as Error).message);
        refuse(socket, e.code, e.message, "protocol");
      }
    };
    raw.on("data", onData);
    // The agent stopping: a connection not yet authenticating is refused now, so that it does not
    // hold the stop until its set-up times out (review 65: 9 s; the agent's forced exit came
    // first). One authenticating becomes a session, drained at once.
    const stopSetup = () => {
      if (stage === "busy") return;
      clearTimeout(timer);
      socket.off("data", onData);
      refuse(socket, "57P03", NO_NEW_SESSIONS, "shutting-down");
    };
    setups.add(stopSetup);
    raw.on("close", () => {
      clearTimeout(timer);
      release(slot);
      setups.delete(stopSetup);
    });
    // Half-open connections are allowed (a session's client may send its last messages and close
    // its side, then read the answers: see PgSession); before the session, a close is the end.
    raw.on("end", () => {
      if (stage !== "busy") raw.destroy();
    });
  };

  function checkStartup(p: Map<string, string>): { code: string; message: string } | undefined {
    if (!p.get("user")) return { code: "28000", message: "no user name in the startup packet" };
    if (p.has("replication"))
      return { code: "0A000", message: "replication connections are not supported through Moat" };
    const opts = p.get("options");
    if (opts !== undefined && opts.trim() !== "")
      return {
        code: "0A000",
        message: "the startup option 'options' is not supported through Moat; use SET after connecting",
      };
    const enc = p.get("client_encoding");
    if (enc !== undefined && enc.toLowerCase() !== "auto" && !isSafeEncoding(enc))
      return { code: "0A000", message: `client_encoding ${enc} is not supported through Moat; use UTF8` };
    return undefined;
  }

  /**
   * Passes a CancelRequest with the right key on to the target; resolves once the target has taken
   * it (closed the connection), so that the client's connection is closed after that, as
   * PostgreSQL's is: a client (libpq's PQcancel) takes the close as "delivered", and a cancel still
   * on its way would cancel the session's next query instead (review 57). At most
   * MAX_CANCELS_IN_FLIGHT at once; more are dropped, as the target may drop them.
   */
  async function cancel(processId: number, secretKey: number): Promise<void> {
    const key = cancelKeys.get(processId);
    if (!key) return;
    const a = Buffer.alloc(4);
    const b = Buffer.alloc(4);
    a.writeInt32BE(key.secretKey);
    b.writeInt32BE(secretKey);
    if (!timingSafeEqual(a, b) || cancelsInFlight >= MAX_CANCELS_IN_FLIGHT) return;
    cancelsInFlight++;
    try {
      await cancelOnTarget(config.target, key.targetProcessId, key.targetSecretKey);
    } finally {
      cancelsInFlight--;
    }
  }

  async function authenticate(
    socket: Socket,
    startup: Map<string, string>,
    token: string,
    source: string,
    rest: Buffer,
    slot: Slot,
  ): Promise<void> {
    const user = startup.get("user") as string;
    const now = new Date();
    let identity: VerifiedIdentity;
    try {
      identity = await verifyAccessToken(token, options.bundles.current(), now);
    } catch (error) {
      const message = error instanceof TokenRejected ? error.message : "the access token could not be verified";
      refuse(socket, "28P01", `password authentication failed for user "${user}": ${message}`, "token");
      return;
    }
    if (identity.user.toLowerCase() !== user.toLowerCase()) {
      refuse(
        socket,
        "28000",
        `the access token belongs to "${identity.user}", not "${user}": connect with user=${identity.user}`,
        "user-mismatch",
      );
      return;
    }
    const sessionId = ulid();
    const targetDatabase = config.target.database ?? startup.get("database") ?? user;
    const verdict = decideConnect(identity, source, now.getTime());
    const actor = { user: identity.user, groups: identity.groups, sourceAddress: source, tokenId: identity.tokenId };
    const start = {
      protocol: "postgres",
      targetUser: config.target.user,
      targetDatabase,
      clientApplication: auditedApplicationName(startup.get("application_name") ?? ""),
    };
    const allowed = verdict.effect === "allow";
    const message = allowed
      ? `session started on ${options.resource}`
      : verdict.effect === "review"
        ? `${verdict.message}; approval is required, and approvals are not available on this agent yet`
        : verdict.message;
    if (!options.audit.hasRoom()) {
      // A session that could not audit its statements is not started (the spool is full and
      // fail-closed); the same answer as when the start itself cannot be recorded.
      refuse(
        socket,
        "53100",
        "the agent's audit spool is full: new sessions are refused until it drains",
        "spool-full",
      );
      logger.warn({ resource: options.resource }, "audit spool full: session refused");
      return;
    }
    try {
      await options.audit.record({
        type: "session.start",
        actor,
        resource: options.resource,
        sessionId,
        verdict: allowed ? ProtoVerdict.ALLOW : verdict.effect === "review" ? ProtoVerdict.REVIEW : ProtoVerdict.DENY,
        rule: verdict.rule,
        message,
        detail: { case: "sessionStart", value: start },
      });
    } catch (error) {
      if (error instanceof SpoolFullError)
        refuse(
          socket,
          "53100",
          "the agent's audit spool is full: new sessions are refused until it drains",
          "spool-full",
        );
      else refuse(socket, "58000", "the agent cannot record this session", "audit");
      logger.error({ err: error }, "could not record a session start");
      return;
    }
    if (!allowed) {
      refuse(socket, "42501", message, "connect-denied");
      return;
    }

    const passed: Record<string, string> = {};
    for (const [k, v] of startup) if (PASSED_PARAMETERS.has(k.toLowerCase())) passed[k] = v;
    // A backstop under the classifier: a user no rule could let change anything gets a read-only
    // database session, so PostgreSQL refuses writes the statement text did not show (functions
    // it calls implicitly). Lifting it (READ WRITE, *_read_only = off, RESET of transaction_read_only)
    // needs db:write; RESET of default_transaction_read_only returns to this startup value.
    const readOnly = config.readOnlySessions && !mayChange(options.bundles, identity, options.resource);
    if (readOnly) passed.default_transaction_read_only = "on";
    /** The session ends before it started (its start was recorded): why, in its end event. */
    const endUnstarted = (message: string, reason: string) =>
      void options.audit
        .record({
          type: "session.end",
          actor,
          resource: options.resource,
          sessionId,
          message,
          detail: { case: "sessionEnd", value: { reason, durationMs: 0n } },
        })
        .catch(() => undefined);
    let target;
    try {
      target = await connectTarget({ target: config.target, database: targetDatabase, parameters: passed });
    } catch (error) {
      const e = error instanceof TargetError ? error : new TargetError("cannot connect to the target");
      logger.warn({ resource: options.resource, err: e.message }, "target connection failed");
      refuse(socket, e.code, e.forClient, "target");
      endUnstarted(e.message, e.message);
      return;
    }
    // What the target's catalog says PostgreSQL may call unseen (attribute notation, views' and
    // policies' functions): decided with the statements; a session is not started without it.
    try {
      await catalog.loadHiddenCalls(targetDatabase);
    } catch (error) {
      target.socket.destroy();
      logger.warn({ resource: options.resource, err: (error as Error).message }, "cannot read the target's catalog");
      refuse(
        socket,
        "08006",
        "the agent cannot read the target database's catalog (the agent's log says why)",
        "target",
      );
      endUnstarted(`cannot read the target's catalog: ${(error as Error).message}`, "cannot read the target's catalog");
      return;
    }
    if (socket.destroyed || slot.state === "gone") {
      // The client left during the target's login.
      target.socket.destroy();
      return;
    }
    // A bundle applied during the target's login and the catalog read found no live session to
    // end (review 64): decided again now, as recheck and cut would have.
    const access = recheckAccess(identity, source, Date.now());
    if ("withdrawn" in access) {
      target.socket.destroy();
      refuse(socket, "57P01", access.withdrawn, "policy");
      endUnstarted(access.withdrawn, access.withdrawn);
      return;
    }
    let processId = randomInt(1, 2 ** 31 - 1);
    while (cancelKeys.has(processId)) processId = randomInt(1, 2 ** 31 - 1);
    const secretKey = randomInt(-(2 ** 31), 2 ** 31 - 1);
    cancelKeys.set(processId, { secretKey, targetProcessId: target.processId, targetSecretKey: target.secretKey });
    clientPids.set(target.processId, processId);

    const session = new PgSession(
      {
        sessionId,
        cancelTarget: () => cancelOnTarget(config.target, target.processId, target.secretKey),
        clientProcessId: (pid) => clientPids.get(pid),
        resource: options.resource,
        identity,
        sourceAddress: source,
        targetUser: config.target.user,
        readOnly,
        database: targetDatabase,
        catalog,
        bundles: options.bundles,
        audit: options.audit,
        classifier: options.classifier,
        offThread:
          options.classifierPool && config.parseOffThreadBytes > 0
            ? { pool: options.classifierPool, minBytes: config.parseOffThreadBytes }
            : undefined,
        logger,
        maxMessageBytes: config.maxMessageBytes,
        maxStatementLength: config.maxStatementLength ?? DEFAULT_MAX_STATEMENT_LENGTH,
        metrics: { statement: options.metrics.statement },
      },
      socket,
      target.socket,
      { searchPath: target.searchPath, parameters: target.parameters },
    );
    promote(slot);
    options.metrics.sessions.inc();
    const entry: LiveSession = {
      identity,
      source,
      started: now.getTime(),
      readOnly,
      maxSeconds: undefined,
      timer: undefined,
    };
    live.set(session, entry);
    void session.done.then(() => {
      count--;
      options.metrics.sessions.dec();
      live.delete(session);
      if (live.size === 0) drained();
      clearTimeout(entry.timer);
      cancelKeys.delete(processId);
      if (clientPids.get(target.processId) === processId) clientPids.delete(target.processId);
    });
    socket.cork();
    socket.write(authenticationRequest(0));
    for (const p of target.parameterStatus) socket.write(p);
    socket.write(backendKeyData(processId, secretKey));
    socket.write(readyForQuery("I"));
    socket.uncork();
    session.start(target.leftover);
    if (rest.length > 0) socket.unshift(rest);
    socket.resume();
    // Set up while the agent drains: told at once, as PostgreSQL tells a client during shutdown.
    if (stopping) session.drain(SHUTTING_DOWN);
    limitLength(session, entry, verdict.obligations.maxSessionSeconds);
  }

  /**
   * Whether a session authenticated earlier may go on under the current bundle: why not (the bundle
   * revoked its token, disabled its user or no longer lets it connect), or the connect verdict.
   */
  function recheckAccess(
    identity: VerifiedIdentity,
    source: string,
    now: number,
  ): { withdrawn: string } | { verdict: ReturnType<typeof decideConnect> } {
    const b = options.bundles.current();
    if (b && (b.revokedTokenIds.has(identity.tokenId) || b.disabledUsers.has(identity.user.toLowerCase())))
      return { withdrawn: "your access was revoked: the session is closed" };
    const verdict = decideConnect(identity, source, now);
    return verdict.effect === "allow" ? { verdict } : { withdrawn: withdrawnMessage(verdict) };
  }

  function withdrawnMessage(verdict: { effect: string; message: string }): string {
    const why = verdict.effect === "review" ? `${verdict.message}; approval is required` : verdict.message;
    return `your access to ${options.resource} was withdrawn: ${why}`;
  }

  /** The bundle's verdict on `identity` connecting to this resource from `source` at `now`. */
  function decideConnect(identity: VerifiedIdentity, source: string, now: number) {
    return options.bundles.decide({
      user: identity.user,
      groups: identity.groups,
      serviceAccount: identity.serviceAccount,
      resource: options.resource,
      action: "connect",
      sourceIp: source,
      now,
    });
  }

  /** Ends `session` once it is `maxSeconds` long (none: no limit), counting from its start. */
  function limitLength(session: PgSession, entry: LiveSession, maxSeconds: number | undefined): void {
    if (maxSeconds === entry.maxSeconds) return;
    clearTimeout(entry.timer);
    entry.timer = undefined;
    entry.maxSeconds = maxSeconds;
    if (maxSeconds === undefined) return;
    const end = () => session.terminate(`the session reached its maximum length (${maxSeconds} s)`);
    const left = entry.started + maxSeconds * 1000 - Date.now();
    if (left <= 0) return end();
    entry.timer = setTimeout(end, left);
    entry.timer.unref();
  }

  const { host, port } = splitHostPort(options.listen);
  const server: Server = createServer({ noDelay: true, allowHalfOpen: true }, handle);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: host === "" ? undefined : host, port }, () => resolve());
  });
  server.on("error", (e) => logger.error({ err: e }, "postgres listener error"));
  const address = server.address();
  const boundPort = typeof address === "object" && address ? address.port : port;
  logger.info({ resource: options.resource, listen: `${host}:${boundPort}` }, "postgres listener started");
  return {
    port: boundPort,
    address: isIP(host) === 6 ? `[${host}]:${boundPort}` : `${host}:${boundPort}`,
    sessions: () => count,
    recheck() {
      let n = 0;
      const at = Date.now();
      for (const [session, entry] of live) {
        const access = recheckAccess(entry.identity, entry.source, at);
        if ("withdrawn" in access) {
          // (review 63: a connect rule removed or denied later left open sessions running.)
          session.terminate(access.withdrawn);
          n++;
          continue;
        }
        // A user no rule lets change anything any more would get a read-only session now: one
        // started otherwise lacks that backstop, and is ended so that its client reconnects
        // (review 64; its statements were decided by the new bundle all the same).
        if (
          !entry.readOnly &&
          config.readOnlySessions &&
          !mayChange(options.bundles, entry.identity, options.resource)
        ) {
          session.terminate(
            `your access to ${options.resource} was narrowed to reading: reconnect for a read-only session`,
          );
          n++;
          continue;
        }
        // (review 63: a maximum length added later did not apply to sessions already open.)
        limitLength(session, entry, access.verdict.obligations.maxSessionSeconds);
      }
      return n;
    },
    async close(o = {}) {
      const drainMs = o.drainMs ?? 0;
      const first = !stopping;
      stopping = true;
      for (const stop of setups) stop();
      if (first && drainMs > 0) {
        // Still listening meanwhile: cancel requests for the sessions draining are served, new
        // sessions refused with 57P03.
        logger.info({ resource: options.resource, sessions: live.size, drainMs }, "draining sessions");
        for (const session of live.keys()) session.drain(SHUTTING_DOWN);
        let timer: NodeJS.Timeout | undefined;
        await new Promise<void>((resolve) => {
          timer = setTimeout(resolve, drainMs);
          drained = resolve;
          if (live.size === 0) resolve();
        });
        clearTimeout(timer);
      } else drained();
      const cancels: Promise<void>[] = [];
      for (const session of live.keys()) {
        session.terminate(SHUTTING_DOWN, "57P01");
        if (session.cancelling) cancels.push(session.cancelling);
      }
      // The running statements' cancels reach the target before the process exits (bounded: the
      // target may not answer).
      if (cancels.length > 0)
        await Promise.race([Promise.all(cancels), new Promise((r) => setTimeout(r, CANCEL_WAIT_MS).unref())]);
      catalog.close();
      // Resolved once every connection has ended (sessions, set-ups, cancel requests).
      serverClosed ??= new Promise<void>((resolve) => server.close(() => resolve()));
      await serverClosed;
    },
  };
}

const SHUTTING_DOWN = "the agent is shutting down";
const NO_NEW_SESSIONS = `${SHUTTING_DOWN}: it accepts no new sessions`;
/** How long a stop waits for the cancels of statements still running to reach the target. */
const CANCEL_WAIT_MS = 2_000;

/**
 * The client's application_name as the audit trail keeps it: as PostgreSQL keeps it (63 bytes at
 * most, here 63 characters), and not at all when it names a secret (a client is free to put
 * `password=...` there).
 */
function auditedApplicationName(name: string): string {
  return SECRET_WORDS.test(name) ? "***" : name.slice(0, 63);
}
