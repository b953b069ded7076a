/**
 * The agent's own connection to a Postgres target: TCP, optional TLS with libpq's sslmode
 * meanings, startup, and authentication with credentials that live only on the agent's host
 * (trust, cleartext, md5, SCRAM-SHA-256). Returns once the target is ready for queries, with what
 * the client must be told (parameter statuses) and the target's cancel key (never shown to users).
 */
import { connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect, TLSSocket } from "node:tls";
import { readFileSync } from "node:fs";
import {
  decodeAuthentication,
  decodeBackendKeyData,
  decodeDataRow,
  decodeErrorFields,
  decodeParameterStatus,
  md5Password,
  ProtocolError,
  ScramClient,
  encodeStartup,
  serialize,
  tlsServerEndPoint,
} from "@moat/pg-wire";
import { certificateSignatureHash } from "@moat/pki";
import type { PostgresTargetConfig } from "../config.js";

export interface TargetConnection {
  socket: Socket | TLSSocket;
  /** ParameterStatus messages as received, to replay to the client. */
  parameterStatus: Buffer[];
  parameters: Map<string, string>;
  processId: number;
  secretKey: number;
  /** The schemas of the role's search path at start (`current_schemas(false)`). */
  searchPath: string[];
  /** Bytes the target sent after its first ReadyForQuery (normally none). */
  leftover: Buffer;
}

/** What a client is told when the agent cannot connect to the target: the details are in its log. */
const CANNOT_CONNECT = "the agent cannot connect to the target database (the agent's log says why)";

/**
 * The agent could not open its connection to the target. `message` (for the agent's log and audit)
 * may name hosts, ports, files and the agent's role; `forClient` is what the client is told, which
 * names none of them (review 47).
 */
export class TargetError extends Error {
  constructor(
    message: string,
    readonly code = "08006",
    readonly forClient = CANNOT_CONNECT,
  ) {
    super(message);
  }
}

const NO_CREDENTIALS = "the agent cannot read its credentials for the target database (the agent's log says why)";

/**
 * Errors of the target at log-in whose message a client may read as it is: they are about what the
 * client asked for or about the server's state (the database does not exist, the server is starting
 * or full), not about the agent's own credentials or configuration.
 */
const CLIENT_READABLE_LOGIN_ERRORS: ReadonlySet<string> = new Set(["3D000", "57P03"]);
/** Errors of the target at log-in passed with their code and a fixed text (theirs may name the agent's role). */
const FIXED_LOGIN_ERRORS: ReadonlyMap<string, string> = new Map([
  ["53300", "the target database has too many connections"],
  ["53400", "the target database refused the connection: a configured limit was reached"],
]);

export function readTargetPassword(target: PostgresTargetConfig): string | undefined {
  if (target.password !== undefined) return target.password;
  if (target.passwordEnv) {
    const v = process.env[target.passwordEnv];
    if (v === undefined)
      throw new TargetError(`the target password variable ${target.passwordEnv} is not set`, "08006", NO_CREDENTIALS);
    return v;
  }
  if (target.passwordFile) {
    try {
      return (readFileSync(target.passwordFile, "utf8").split(/\r?\n/)[0] ?? "").trimEnd();
    } catch {
      throw new TargetError(`the target password file ${target.passwordFile} cannot be read`, "08006", NO_CREDENTIALS);
    }
  }
  return undefined;
}

/** Reads typed messages from a socket during set-up (small, bounded). */
class SetupReader {
  private buf: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  private failure: Error | undefined;
  constructor(private socket: Socket) {
    this.attach(socket);
  }
  private readonly onData = (chunk: Buffer) => {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    if (this.buf.length > 1024 * 1024) this.fail(new TargetError("the target sent too much during set-up"));
    this.waiter?.();
  };
  private readonly onClose = () => this.fail(new TargetError("the target closed the connection during set-up"));
  private readonly onError = (e: Error) => this.fail(new TargetError(`cannot reach the target: ${e.message}`));
  attach(socket: Socket) {
    this.socket = socket;
    socket.on("data", this.onData);
    socket.on("close", this.onClose);
    socket.on("error", this.onError);
  }
  detach(): Buffer {
    this.socket.off("data", this.onData);
    this.socket.off("close", this.onClose);
    this.socket.off("error", this.onError);
    const rest = this.buf;
    this.buf = Buffer.alloc(0);
    return rest;
  }
  fail(e: Error) {
    this.failure ??= e;
    this.waiter?.();
  }
  private async wait(): Promise<void> {
    if (this.failure) throw this.failure;
    await new Promise<void>((r) => (this.waiter = r));
    this.waiter = undefined;
    if (this.failure) throw this.failure;
  }
  async byte(): Promise<number> {
    while (this.buf.length < 1) await this.wait();
    const b = this.buf[0] as number;
    this.buf = this.buf.subarray(1);
    return b;
  }
  async message(): Promise<{ type: string; body: Buffer }> {
    for (;;) {
      if (this.buf.length >= 5) {
        const len = this.buf.readInt32BE(1);
        if (len < 4 || len > 1024 * 1024) throw new TargetError("the target sent an invalid message");
        if (this.buf.length >= len + 1) {
          const type = String.fromCharCode(this.buf[0] as number);
          const body = this.buf.subarray(5, len + 1);
          this.buf = this.buf.subarray(len + 1);
          return { type, body };
        }
      }
      await this.wait();
    }
  }
}

function targetFailure(body: Buffer): TargetError {
  const e = decodeErrorFields(body);
  const message = `the target refused the connection: ${e.message}`;
  if (CLIENT_READABLE_LOGIN_ERRORS.has(e.code)) return new TargetError(message, e.code, message);
  const fixed = FIXED_LOGIN_ERRORS.get(e.code);
  if (fixed) return new TargetError(message, e.code, fixed);
  return new TargetError(
    message,
    "08006",
    "the target database refused the agent's connection (the agent's log says why)",
  );
}

export async function connectTarget(options: {
  target: PostgresTargetConfig;
  database: string;
  /** Startup parameters passed through from the client (application_name, client_encoding...). */
  parameters: Record<string, string>;
  signal?: AbortSignal;
}): Promise<TargetConnection> {
  const { target } = options;
  const password = readTargetPassword(target);
  let socket: Socket | TLSSocket = await new Promise<Socket>((resolve, reject) => {
    const s = netConnect({ host: target.host, port: target.port });
    const timer = setTimeout(() => {
      s.destroy();
      reject(
        new TargetError(`the target ${target.host}:${target.port} did not answer in ${target.connectTimeoutMs} ms`),
      );
    }, target.connectTimeoutMs);
    s.once("connect", () => {
      clearTimeout(timer);
      s.setNoDelay(true);
      resolve(s);
    });
    s.once("error", (e) => {
      clearTimeout(timer);
      reject(new TargetError(`cannot reach the target ${target.host}:${target.port}: ${e.message}`));
    });
  });
  const deadline = setTimeout(() => socket.destroy(new Error("set-up timed out")), target.connectTimeoutMs);
  try {
    let reader = new SetupReader(socket);
    if (target.sslmode !== "disable") {
      socket.write(serialize.requestSsl());
      const answer = await reader.byte();
      if (answer === 0x53) {
        reader.detach();
        const verify = target.sslmode === "verify-ca" || target.sslmode === "verify-full";
        const tlsSocket = tlsConnect({
          socket,
          servername: target.serverName ?? target.host,
          rejectUnauthorized: verify,
          ...(target.caFile ? { ca: readFileSync(target.caFile) } : {}),
          ...(target.sslmode === "verify-ca" ? { checkServerIdentity: () => undefined } : {}),
        });
        await new Promise<void>((resolve, reject) => {
          tlsSocket.once("secureConnect", resolve);
          tlsSocket.once("error", (e) => reject(new TargetError(`TLS to the target failed: ${e.message}`)));
        });
        socket = tlsSocket;
        reader = new SetupReader(socket);
      } else if (answer === 0x4e) {
        if (target.sslmode !== "prefer")
          throw new TargetError(`the target does not accept TLS, and sslmode is ${target.sslmode}`);
      } else throw new TargetError("the target answered the TLS request with nonsense");
    }
    // UTF8 unless the client asked for another encoding (its text is then checked as such: session.ts).
    socket.write(
      encodeStartup({
        client_encoding: "UTF8",
        ...options.parameters,
        user: target.user,
        database: options.database,
      }),
    );

    const parameterStatus: Buffer[] = [];
    const parameters = new Map<string, string>();
    let processId = 0;
    let secretKey = 0;
    let scram: ScramClient | undefined;
    const needPassword = () => {
      if (password === undefined)
        throw new TargetError("the target asks for a password and none is configured for it on the agent");
      return password;
    };
    for (;;) {
      const m = await reader.message();
      if (m.type === "E") throw targetFailure(m.body);
      if (m.type === "R") {
        const auth = decodeAuthentication(m.body);
        switch (auth.kind) {
          case "ok":
            break;
          case "cleartext":
            socket.write(serialize.password(needPassword()));
            break;
          case "md5":
            socket.write(serialize.password(md5Password(target.user, needPassword(), auth.salt)));
            break;
          case "sasl": {
            // Over TLS, bind the SCRAM exchange to the target's certificate when it offers
            // SCRAM-SHA-256-PLUS: a TLS interceptor between agent and target (possible unless
            // sslmode=verify-full) then cannot relay the login.
            const tls = socket instanceof TLSSocket;
            const binding =
              socket instanceof TLSSocket && auth.mechanisms.includes("SCRAM-SHA-256-PLUS")
                ? channelBindingOf(socket)
                : undefined;
            if (!binding && !auth.mechanisms.includes("SCRAM-SHA-256"))
              throw new TargetError(`the target offers no supported SASL mechanism (${auth.mechanisms.join(", ")})`);
            scram = new ScramClient(
              needPassword(),
              binding,
              undefined,
              tls && binding === undefined && !auth.mechanisms.includes("SCRAM-SHA-256-PLUS"),
            );
            socket.write(serialize.sendSASLInitialResponseMessage(scram.mechanism, scram.first()));
            break;
          }
          case "sasl-continue":
            if (!scram) throw new TargetError("the target sent SASL data out of order");
            socket.write(serialize.sendSCRAMClientFinalMessage(scram.final(auth.data)));
            break;
          case "sasl-final":
            if (!scram) throw new TargetError("the target sent SASL data out of order");
            scram.verify(auth.data);
            break;
          default:
            throw new TargetError(`the target asks for an unsupported authentication method (${auth.code})`);
        }
        continue;
      }
      if (m.type === "S") {
        const p = decodeParameterStatus(m.body);
        parameters.set(p.name, p.value);
        const raw = Buffer.allocUnsafe(m.body.length + 5);
        raw[0] = 0x53;
        raw.writeInt32BE(m.body.length + 4, 1);
        m.body.copy(raw, 5);
        parameterStatus.push(raw);
        continue;
      }
      if (m.type === "K") {
        ({ processId, secretKey } = decodeBackendKeyData(m.body));
        continue;
      }
      if (m.type === "Z") break;
      // NoticeResponse and anything else during start-up: nothing the client needs.
    }

    // The schemas unqualified names resolve in (existing ones, "$user" resolved), to qualify table
    // names for policy decisions; the server process's id, to tell PostgreSQL itself from a pooler;
    // whether the read-only backstop was applied; whether the connection is new (nothing an earlier
    // user of it left: a pooler without a reset query). See SESSION_CHECK and checkSessionTarget.
    socket.write(serialize.query(SESSION_CHECK));
    let searchPath = ["public"];
    let backendPid: number | undefined;
    let readOnly: string | undefined;
    let leftovers: string | undefined;
    for (;;) {
      const m = await reader.message();
      if (m.type === "D") {
        const [schemas, pid, ro, left] = decodeDataRow(m.body);
        if (schemas) searchPath = parseTextArray(schemas.toString("utf8"));
        backendPid = pid ? Number(pid.toString("latin1")) : undefined;
        readOnly = ro?.toString("latin1");
        leftovers = left?.toString("latin1");
      } else if (m.type === "E") {
        // Logged in: the agent's own check failed (a role that may not read pg_prepared_statements or
        // pg_cursors, review 52).
        const e = decodeErrorFields(m.body);
        throw new TargetError(
          `the agent's connection check (search path, server process, read-only setting, pg_prepared_statements, pg_cursors) failed on the target: ${e.message}`,
          "08006",
          MISCONFIGURED,
        );
      } else if (m.type === "Z") break;
    }
    checkSessionTarget(target, options.parameters, { processId, backendPid, readOnly, leftovers });
    const leftover = reader.detach();
    clearTimeout(deadline);
    return { socket, parameterStatus, parameters, processId, secretKey, searchPath, leftover };
  } catch (error) {
    clearTimeout(deadline);
    socket.destroy();
    if (error instanceof TargetError) throw error;
    if (error instanceof ProtocolError) throw new TargetError(`authentication to the target failed: ${error.message}`);
    throw new TargetError(`cannot set up the target connection: ${(error as Error).message}`);
  }
}

const MISCONFIGURED = "the target database is not set up as Moat needs (the agent's log says why)";

/**
 * Run at each target connection: the search path (to qualify names), the server's process id (a
 * pooler answers with its own), the read-only backstop, and what an earlier user of the connection
 * left in it (temporary relations, prepared statements, cursors: `0` when nothing; pg_class is read
 * only when the connection has a temporary schema, which a new one has not).
 */
const SESSION_CHECK = `SELECT pg_catalog.current_schemas(false), pg_catalog.pg_backend_pid(),
 pg_catalog.current_setting('default_transaction_read_only'),
 CASE WHEN pg_catalog.pg_my_temp_schema() = 0 THEN 0
 ELSE (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()) END
 + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements)
 + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_cursors)`;

/**
 * Refuses a target connection the agent's decisions could not rely on (review 47):
 * - a connection pooler not declared as one pooling in session mode (`pooler: session`): a pooler
 *   answers with its own process id, not the server's; one pooling by transaction or statement runs a
 *   session's statements on server connections other sessions share, under their search_path and
 *   prepared statements, where the agent's per-session reading of names is wrong (another session's
 *   `SET search_path` made an unqualified name read a denied schema's table);
 * - a read-only session the target did not make read-only (a pooler dropping the startup parameter:
 *   pgbouncer's `ignore_startup_parameters`).
 */
function checkSessionTarget(
  target: PostgresTargetConfig,
  parameters: Record<string, string>,
  seen: {
    processId: number;
    backendPid: number | undefined;
    readOnly: string | undefined;
    leftovers: string | undefined;
  },
): void {
  // A connection an earlier session used without a reset (a pooler's server_reset_query emptied):
  // its temporary relations come before the schemas the agent qualifies names with (review 50).
  if (seen.leftovers !== "0")
    throw new TargetError(
      `the target ${target.host}:${target.port} gave a connection holding ${seen.leftovers ?? "unknown"} temporary relations, prepared statements or cursors of an earlier session (a pooler without a reset query, e.g. pgbouncer's server_reset_query = DISCARD ALL?): the session is refused`,
      "08006",
      MISCONFIGURED,
    );
  if (target.pooler !== "session" && seen.backendPid !== seen.processId)
    throw new TargetError(
      `the target ${target.host}:${target.port} looks like a connection pooler (its server process ${String(seen.backendPid)} is not the ${seen.processId} it announced): Moat needs PostgreSQL itself, or a pooler in session mode declared with pooler: session (transaction and statement pooling share server connections between sessions)`,
      "08006",
      MISCONFIGURED,
    );
  if (parameters.default_transaction_read_only === "on" && seen.readOnly !== "on")
    throw new TargetError(
      `the target ${target.host}:${target.port} did not apply default_transaction_read_only = on to a read-only session (a pooler ignoring the startup parameter?): the session is refused; set readOnlySessions: false to rely on the agent's decisions alone`,
      "08006",
      MISCONFIGURED,
    );
}

/**
 * `tls-server-end-point` data for the target's certificate, or undefined when its signature has no
 * usable hash (e.g. Ed25519: PostgreSQL cannot bind those either).
 */
function channelBindingOf(socket: TLSSocket): Buffer | undefined {
  const cert = socket.getPeerX509Certificate();
  if (!cert) return undefined;
  const hash = certificateSignatureHash(cert.raw);
  return hash ? tlsServerEndPoint(cert.raw, hash) : undefined;
}

/** A one-dimensional text array in PostgreSQL's output format: `{public,"my schema"}`. */
export function parseTextArray(text: string): string[] {
  if (!text.startsWith("{") || !text.endsWith("}")) return [];
  const out: string[] = [];
  let i = 1;
  while (i < text.length - 1) {
    let item = "";
    if (text[i] === '"') {
      i++;
      while (i < text.length - 1 && text[i] !== '"') {
        if (text[i] === "\\") i++;
        item += text[i++];
      }
      i++;
    } else {
      while (i < text.length - 1 && text[i] !== ",") item += text[i++];
    }
    out.push(item);
    if (text[i] === ",") i++;
  }
  return out;
}

/** Sends a CancelRequest for the target's own process and key (a new connection, as libpq does). */
export async function cancelOnTarget(
  target: PostgresTargetConfig,
  processId: number,
  secretKey: number,
): Promise<void> {
  await new Promise<void>((resolve) => {
    const s = netConnect({ host: target.host, port: target.port });
    const done = () => {
      s.destroy();
      resolve();
    };
    s.setTimeout(target.connectTimeoutMs, done);
    s.once("error", done);
    s.once("close", done);
    s.once("connect", () => {
      if (target.sslmode === "disable" || target.sslmode === "prefer") {
        s.end(serialize.cancel(processId, secretKey));
        return;
      }
      s.write(serialize.requestSsl());
      s.once("data", (b: Buffer) => {
        if (b[0] !== 0x53) return done();
        const t = tlsConnect({
          socket: s,
          servername: target.serverName ?? target.host,
          rejectUnauthorized: target.sslmode !== "require",
          ...(target.caFile ? { ca: readFileSync(target.caFile) } : {}),
          ...(target.sslmode === "verify-ca" ? { checkServerIdentity: () => undefined } : {}),
        });
        t.once("secureConnect", () => t.end(serialize.cancel(processId, secretKey)));
        t.once("error", done);
        t.once("close", done);
      });
    });
  });
}
