/**
 * NATS JetStream sink: publishes each audit event to `<subjectPrefix>.<type>` (for example
 * `moat.audit.db.query`) with its JSON view as the payload and `Nats-Msg-Id: <event id>`, so that
 * JetStream drops a re-publication of the same event (after a crash, a lost acknowledgement or a
 * failover) within the stream's duplicate window. An event counts as delivered only once
 * JetStream acknowledged storing it. The stream is created when missing (subjects
 * `<subjectPrefix>.>`). Credentials are never logged.
 */
import { readFileSync } from "node:fs";
import {
  connect,
  credsAuthenticator,
  nanos,
  RetentionPolicy,
  StorageType,
  type ConnectionOptions,
  type JetStreamClient,
  type NatsConnection,
  type NatsError,
  type PubAck,
} from "nats";
import type { Logger } from "@moat/common";
import type { AuditView } from "../services/audit.js";
import type { ResolvedNatsSink } from "./config.js";
import { SinkError, type AuditSink, type FailureReason } from "./sink.js";

const encoder = new TextEncoder();

/** `<prefix>.<type>` with each token of the type reduced to what a subject token may hold. */
export function subjectFor(prefix: string, type: string): string {
  const tokens = type.split(".").map((t) => t.replace(/[^A-Za-z0-9_-]/g, "_") || "_");
  return `${prefix}.${tokens.join(".")}`;
}

function reasonOf(error: unknown): FailureReason {
  const code = (error as Partial<NatsError>)?.code;
  if (code === "TIMEOUT" || code === "408") return "timeout";
  if (
    code === "CONNECTION_REFUSED" ||
    code === "CONNECTION_CLOSED" ||
    code === "CONNECTION_TIMEOUT" ||
    code === "DISCONNECT" ||
    code === "503"
  )
    return "unavailable";
  if (code === "AUTHORIZATION_VIOLATION" || code === "PERMISSIONS_VIOLATION" || code === "BAD_AUTHENTICATION")
    return "rejected";
  return "error";
}

function failure(what: string, error: unknown, delivered = 0): SinkError {
  const message = error instanceof Error ? error.message : String(error);
  return new SinkError(`${what}: ${message}`, reasonOf(error), { cause: error, delivered });
}

/** The NATS sink's id (its cursor and lease are stored under it). */
export const NATS_SINK_ID = "nats";

export function createNatsSink(config: ResolvedNatsSink, deps: { logger: Logger }): AuditSink {
  const logger = deps.logger.child({ sink: "nats" });
  let connection: Promise<{ nc: NatsConnection; js: JetStreamClient }> | undefined;

  const options = (): ConnectionOptions => ({
    servers: config.servers,
    name: "moat-control-plane",
    timeout: config.timeoutMs,
    reconnect: true,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    ...(config.user !== undefined ? { user: config.user, pass: config.password ?? "" } : {}),
    ...(config.token !== undefined ? { token: config.token } : {}),
    // A function: the creds file is read again at each (re)connect, so it can be rotated in place.
    ...(config.credsFile !== undefined
      ? { authenticator: credsAuthenticator(() => readFileSync(config.credsFile as string)) }
      : {}),
    ...(config.tls ? { tls: { ...config.tls } } : {}),
  });

  const open = async () => {
    let nc: NatsConnection;
    try {
      nc = await connect(options());
    } catch (error) {
      throw failure("could not connect to NATS", error);
    }
    try {
      const jsm = await nc.jetstreamManager({ timeout: config.timeoutMs });
      try {
        await jsm.streams.info(config.stream);
      } catch (error) {
        if ((error as NatsError).api_error?.err_code !== 10059 || !config.createStream) throw error;
        await jsm.streams.add({
          name: config.stream,
          subjects: [`${config.subjectPrefix}.>`],
          storage: StorageType.File,
          retention: RetentionPolicy.Limits,
          duplicate_window: nanos(config.duplicateWindowSeconds * 1000),
        });
        logger.info({ stream: config.stream, subjects: `${config.subjectPrefix}.>` }, "created the JetStream stream");
      }
    } catch (error) {
      await nc.close().catch(() => undefined);
      throw failure(`could not find or create the stream ${config.stream}`, error);
    }
    void nc.closed().then(() => (connection = undefined));
    logger.info({ server: nc.getServer() }, "connected to NATS");
    return { nc, js: nc.jetstream({ timeout: config.timeoutMs }) };
  };

  const connected = () => {
    connection ??= open().catch((error: unknown) => {
      connection = undefined;
      throw error;
    });
    return connection;
  };

  return {
    id: NATS_SINK_ID,
    async deliver(events: AuditView[]) {
      const { js } = await connected();
      const publish = (event: AuditView): Promise<PubAck> =>
        js.publish(subjectFor(config.subjectPrefix, event.type), encoder.encode(JSON.stringify(event)), {
          msgID: event.id,
          expect: { streamName: config.stream },
          timeout: config.timeoutMs,
        });
      // Up to maxInFlight publishes await their acks; only an unbroken prefix of acks counts as delivered.
      const inFlight: Promise<PubAck>[] = [];
      let acked = 0;
      let next = 0;
      try {
        while (acked < events.length) {
          while (next < events.length && inFlight.length < config.maxInFlight)
            inFlight.push(publish(events[next++] as AuditView));
          await inFlight.shift();
          acked++;
        }
      } catch (error) {
        // Let the other pending publishes settle before the worker retries (their results are unknown).
        await Promise.allSettled(inFlight);
        throw failure("JetStream did not acknowledge a publish", error, acked);
      }
      return events.length;
    },
    async close() {
      const open = connection;
      connection = undefined;
      if (open) await (await open.catch(() => undefined))?.nc.close();
    },
  };
}
