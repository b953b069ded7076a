/**
 * The control plane's side of the agent channel (AgentService over gRPC, TLS by default).
 * Enrol: one-time token -> credential. Connect: one authenticated bidi stream per agent carrying
 * typed messages; this module keeps the live streams of this replica, records connection state in
 * the store, and cuts a stream when its agent is revoked (bus event, so any replica can cut it).
 */
import { randomId, isAppError, grpcStatusByCode, AppError, type Logger } from "@moat/common";
import {
  agentServiceDefinition,
  create,
  ConnectResponseSchema,
  ResourceType as ProtoResourceType,
  timestampFromDate,
  type ConnectRequest,
  type ConnectResponse,
  type EnrolRequest,
  type EnrolResponse,
  type Hello,
  EnrolResponseSchema,
} from "@moat/proto";
import * as grpc from "@grpc/grpc-js";
import type { Http2Session } from "node:http2";
import type { EventBus } from "../bus.js";
import type { ControlPlaneMetrics } from "../metrics.js";
import type { AgentService } from "../services/agents.js";
import { BUNDLE_ENVELOPE_HEADROOM_BYTES, type BundleService, type OversizedBundleResult } from "../services/bundles.js";
import type { AuditService } from "../services/audit.js";
import type { ResourceInput, ResourceType, Store } from "../store/index.js";

export interface AgentChannelDeps {
  logger: Logger;
  agents: AgentService;
  bundles: BundleService;
  audit: Pick<AuditService, "ingest" | "recordControlPlane">;
  store: Pick<Store, "agents" | "resources">;
  bus: Pick<EventBus, "subscribe" | "publish">;
  metrics: ControlPlaneMetrics;
  now: () => Date;
  replicaId: string;
  heartbeatSeconds: number;
  maxMessageBytes: number;
  /** How long a new stream may take to send its Hello. */
  helloTimeoutMs?: number;
  /** Connected agents get a freshly signed bundle this often, so theirs never expires while connected. */
  bundleRefreshMs: number;
}

type DuplexCall = grpc.ServerDuplexStream<ConnectRequest, ConnectResponse>;

/** What the control plane sent in one bundle, to read the agent's acknowledgement of it. */
interface SentBundle {
  keyId: string;
  bundleKeyIds: string[];
  policyRevision: bigint;
  /** Signed with the oldest active key because the agent's trusted keys were not known yet. */
  transition: boolean;
}

interface LiveSession {
  agentId: string;
  agentName: string;
  connectedAt: Date;
  call: DuplexCall;
  close(code: grpc.status, details: string): void;
  /**
   * Bundle keys the agent trusts: those of the last bundle it acknowledged on this stream. Unknown
   * at first (it may have been offline through a key rotation), so its first bundles are signed
   * with the oldest active key.
   */
  trustedKeyIds?: Set<string>;
  /** Bundles sent on this stream and not yet acknowledged, by version (bounded). */
  sent: Map<bigint, SentBundle>;
}

const MAX_RESOURCES = 1000;
/** Most events one AuditBatch may carry (the agent sends at most 500). */
const MAX_AUDIT_BATCH = 2000;

/** HTTP/2 receive windows for agent streams (see widenReceiveWindow). */
const STREAM_WINDOW_BYTES = 4 * 1024 * 1024;
const SESSION_WINDOW_BYTES = 16 * 1024 * 1024;

/**
 * Agents ship audit batches of a few hundred KiB, several in flight; HTTP/2's default 64 KiB
 * receive window made each batch wait for WINDOW_UPDATEs, which a busy event loop (a batch being
 * stored) sends late, so the stream idled half the time. grpc-js has no server option for the
 * window (only the client's `grpc-node.flow_control_window`), so it is raised on the call's HTTP/2
 * session: a larger window for the connection and, through SETTINGS, for its streams. Best effort:
 * without access to the session nothing changes but speed.
 */
function widenReceiveWindow(call: DuplexCall): void {
  try {
    let inner = (call as unknown as { call?: unknown }).call as
      { stream?: { session?: Http2Session }; nextCall?: unknown } | undefined;
    for (let depth = 0; inner && !inner.stream && depth < 8; depth++) inner = inner.nextCall as typeof inner;
    const session = inner?.stream?.session;
    if (!session || session.destroyed) return;
    const marked = session as unknown as { moatWindow?: boolean };
    if (marked.moatWindow) return;
    marked.moatWindow = true;
    session.setLocalWindowSize(SESSION_WINDOW_BYTES);
    session.settings({ initialWindowSize: STREAM_WINDOW_BYTES });
  } catch {
    // best effort
  }
}
/** Audit batches of one stream stored at a time (the agent keeps 4 in flight). */
const MAX_PIPELINED_BATCHES = 8;
/** Bundles built and sent at once during a fan-out (bounds CPU bursts and memory). */
const FAN_OUT_CONCURRENCY = 8;
const MAX_LABELS = 64;
/** Sent bundles remembered per stream until acknowledged. */
const MAX_UNACKED_BUNDLES = 32;
const NAME_PATTERN = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

const TYPE_NAMES: Record<number, ResourceType | undefined> = {
  [ProtoResourceType.POSTGRES]: "postgres",
  [ProtoResourceType.SSH]: "ssh",
  [ProtoResourceType.KUBERNETES]: "kubernetes",
  [ProtoResourceType.HTTP]: "http",
};

/** Validates an agent's announced resources; problems are per resource, the rest is accepted. */
export function readAnnouncement(hello: Hello): {
  inputs: ResourceInput[];
  rejected: { name: string; reason: string }[];
} {
  const inputs: ResourceInput[] = [];
  const rejected: { name: string; reason: string }[] = [];
  const seen = new Set<string>();
  for (const r of hello.resources.slice(0, MAX_RESOURCES)) {
    const type = TYPE_NAMES[r.type];
    const reject = (reason: string) => rejected.push({ name: r.name, reason });
    if (!NAME_PATTERN.test(r.name) || r.name.length > 63)
      reject("name must be 1-63 lowercase letters, digits and dashes");
    else if (seen.has(r.name)) reject("announced twice");
    else if (!type) reject("unknown resource type");
    else if (r.labels.length > MAX_LABELS) reject(`more than ${MAX_LABELS} labels`);
    else if (r.labels.some((l) => l.key.length === 0 || l.key.length > 63 || l.value.length > 255))
      reject("label keys must be 1-63 characters, values at most 255");
    else {
      seen.add(r.name);
      inputs.push({
        name: r.name,
        type,
        labels: Object.fromEntries(r.labels.map((l) => [l.key, l.value])),
        listenAddress: r.listenAddress.slice(0, 255),
        description: r.description.slice(0, 500),
      });
    }
  }
  for (const r of hello.resources.slice(MAX_RESOURCES))
    rejected.push({ name: r.name, reason: `more than ${MAX_RESOURCES} resources` });
  return { inputs, rejected };
}

function statusOf(error: unknown): { code: grpc.status; details: string } {
  if (isAppError(error)) return { code: grpcStatusByCode[error.code] as grpc.status, details: error.message };
  return { code: grpc.status.INTERNAL, details: "internal error" };
}

function bearer(metadata: grpc.Metadata): string | undefined {
  const value = metadata.get("authorization")[0];
  if (typeof value !== "string") return undefined;
  const match = /^Bearer\s+(\S+)$/i.exec(value.trim());
  return match?.[1];
}

export interface AgentChannel {
  server: grpc.Server;
  /** Agents with a live stream on this replica. */
  connectedAgentIds(): string[];
  /** Sends a message to an agent connected to this replica; false when it is not here. */
  send(agentId: string, message: ConnectResponse): boolean;
  /** Ends every stream (graceful shutdown). */
  closeAll(details: string): void;
  /** Rebuilds and pushes every connected agent's bundle (a change made on another replica). */
  pushAll(): void;
}

export function createAgentChannel(deps: AgentChannelDeps): AgentChannel {
  const { logger, agents, store, metrics, now } = deps;
  const sessions = new Map<string, LiveSession>();
  const server = new grpc.Server({
    "grpc.max_receive_message_length": deps.maxMessageBytes,
    "grpc.max_send_message_length": deps.maxMessageBytes,
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.http2.min_ping_interval_without_data_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
  });

  deps.bus.subscribe("agent.revoked", ({ agentId, reason }) => {
    sessions.get(agentId)?.close(grpc.status.PERMISSION_DENIED, `agent revoked: ${reason}`);
  });

  /** Builds, signs and sends the agent's current bundle on its live stream. */
  async function pushBundle(session: LiveSession): Promise<void> {
    try {
      const trusted = session.trustedKeyIds;
      const built = await deps.bundles.build(session.agentId, trusted ? { trustedKeyIds: trusted } : {});
      if (sessions.get(session.agentId) !== session) return;
      if (built.kind === "too_large") {
        await refuseOversized(session, built);
        return;
      }
      session.sent.set(built.version, {
        keyId: built.keyId,
        bundleKeyIds: built.bundleKeyIds,
        policyRevision: built.policyRevision,
        transition: trusted === undefined,
      });
      for (const version of session.sent.keys()) {
        if (session.sent.size <= MAX_UNACKED_BUNDLES) break;
        session.sent.delete(version);
      }
      session.call.write(create(ConnectResponseSchema, { kind: { case: "bundle", value: built.signed } }));
      logger.debug(
        {
          agentId: session.agentId,
          version: built.version.toString(),
          policyRevision: built.policyRevision.toString(),
          keyId: built.keyId,
          policies: built.policies,
          bytes: built.bytes,
        },
        "bundle sent",
      );
    } catch (error) {
      logger.error({ err: error, agentId: session.agentId }, "could not build the agent's bundle");
    }
  }

  /**
   * A bundle over the size budget is not sent (the agent keeps enforcing its last one): the
   * agent's bundle status says why, and the first time (per distinct problem) it is audited.
   */
  async function refuseOversized(session: LiveSession, built: OversizedBundleResult): Promise<void> {
    const { agentId, agentName } = session;
    metrics.bundleFailures.labels("too_large").inc();
    const error =
      `the policy bundle is ${built.bytes} bytes, over the ${built.budget}-byte budget ` +
      `(grpc.maxMessageBytes minus ${BUNDLE_ENVELOPE_HEADROOM_BYTES} for the envelope): it was not sent and the ` +
      "agent keeps enforcing its last bundle; shorten or narrow the policies that select this agent's resources, " +
      "or raise grpc.maxMessageBytes (and the agent's controlPlane.maxMessageBytes)";
    logger.error(
      {
        agentId,
        agentName,
        version: built.version.toString(),
        policyRevision: built.policyRevision.toString(),
        policies: built.policies,
        bytes: built.bytes,
        budget: built.budget,
      },
      "bundle over the size budget: not sent; the agent keeps its last bundle",
    );
    if (await store.agents.setBundleError(agentId, built.version, error, now())) {
      await deps.audit
        .recordControlPlane({
          type: "bundle.refused",
          actor: "control-plane",
          message: `bundle for agent ${agentName} (${agentId}) at policy revision ${built.policyRevision} not sent: ${error}`,
        })
        .catch((err: unknown) => logger.error({ err, agentId }, "could not record a control-plane audit event"));
    }
  }

  /**
   * Pushes fresh bundles to `targets`, a few at a time, without holding up whoever caused the
   * change. A newer fan-out supersedes an older one still running (it covers the same agents).
   */
  const pending = new Set<LiveSession>();
  let workers = 0;
  /**
   * Queues `targets` for a fresh bundle and works the queue a few at a time, off the request path.
   * An agent already queued keeps its place (no restart from the head, so a stream of changes
   * cannot starve the agents at the tail); each push builds from the latest shared content.
   */
  function fanOut(targets: LiveSession[]): void {
    deps.bundles.invalidate();
    for (const session of targets) pending.add(session);
    while (workers < FAN_OUT_CONCURRENCY && pending.size > workers) {
      workers++;
      void (async () => {
        try {
          for (;;) {
            const next = pending.values().next();
            if (next.done) break;
            pending.delete(next.value);
            await pushBundle(next.value);
          }
        } finally {
          workers--;
        }
      })();
    }
  }

  deps.bus.subscribe("bundle.changed", ({ agentIds }) => {
    if (agentIds === "*") fanOut([...sessions.values()]);
    else fanOut(agentIds.flatMap((id) => sessions.get(id) ?? []));
  });

  const refreshTimer = setInterval(() => fanOut([...sessions.values()]), deps.bundleRefreshMs);
  refreshTimer.unref();

  function enrol(call: grpc.ServerUnaryCall<EnrolRequest, EnrolResponse>, callback: grpc.sendUnaryData<EnrolResponse>) {
    const request = call.request;
    agents
      .enrol(request.enrolmentToken, {
        version: request.agentVersion.slice(0, 64),
        hostname: request.hostname.slice(0, 255),
      })
      .then(async ({ agent, credential }) => {
        const bundleKeys = await deps.bundles.bundleKeys();
        metrics.enrolments.labels("ok").inc();
        logger.info({ agentId: agent.id, agentName: agent.name, peer: call.getPeer() }, "agent enrolled");
        callback(
          null,
          create(EnrolResponseSchema, { agentId: agent.id, agentName: agent.name, credential, bundleKeys }),
        );
      })
      .catch((error: unknown) => {
        const status = statusOf(error);
        metrics.enrolments.labels(isAppError(error) ? error.code : "internal").inc();
        if (status.code === grpc.status.INTERNAL) logger.error({ err: error }, "enrolment failed");
        else logger.warn({ peer: call.getPeer(), reason: status.details }, "enrolment refused");
        callback({ code: status.code, details: status.details });
      });
  }

  function connect(call: DuplexCall) {
    const peer = call.getPeer();
    widenReceiveWindow(call);
    let session: LiveSession | undefined;
    let ended = false;
    let livenessTimer: NodeJS.Timeout | undefined;
    const livenessMs = deps.heartbeatSeconds * 3 * 1000;

    const fail = (code: grpc.status, details: string) => {
      if (ended) return;
      ended = true;
      call.emit("error", { code, details });
    };

    const send = (message: ConnectResponse) => {
      if (!ended) call.write(message);
    };

    const armLiveness = () => {
      clearTimeout(livenessTimer);
      livenessTimer = setTimeout(
        () => fail(grpc.status.UNAVAILABLE, "no message from the agent within the heartbeat window"),
        livenessMs,
      );
      livenessTimer.unref();
    };

    const cleanup = () => {
      ended = true;
      clearTimeout(livenessTimer);
      clearTimeout(helloTimer);
      if (session && sessions.get(session.agentId) === session) {
        sessions.delete(session.agentId);
        metrics.agentStreams.set(sessions.size);
        const { agentId, connectedAt } = session;
        store.agents
          .markDisconnected(agentId, connectedAt, now())
          .catch((error: unknown) => logger.warn({ err: error, agentId }, "could not record disconnect"));
        logger.info({ agentId, peer }, "agent disconnected");
      }
    };
    call.on("end", () => {
      cleanup();
      call.end();
    });
    call.on("cancelled", cleanup);
    call.on("error", cleanup);
    call.on("close", cleanup);

    const helloTimer = setTimeout(
      () => fail(grpc.status.DEADLINE_EXCEEDED, "no Hello within the time allowed"),
      deps.helloTimeoutMs ?? 10_000,
    );
    helloTimer.unref();

    const credential = bearer(call.metadata);
    const authenticated = credential
      ? agents.authenticate(credential)
      : Promise.reject(
          new AppError("unauthenticated", "send the agent credential as 'authorization: Bearer <credential>'"),
        );

    let queue = Promise.resolve();
    // Audit batches being stored, and their acks in arrival order (see "auditBatch" below).
    let acks = Promise.resolve();
    let pendingIngests = 0;
    let agentIdForLogs: string | undefined;
    const failWith = (error: unknown) => {
      if (ended) return;
      const status = statusOf(error);
      if (status.code === grpc.status.INTERNAL)
        logger.error({ err: error, agentId: agentIdForLogs }, "agent message failed");
      fail(status.code, status.details);
    };
    authenticated.then(
      (agent) => {
        agentIdForLogs = agent.id;
        // Messages are handled in order, one at a time (audit batches are stored pipelined).
        call.on("data", (message: ConnectRequest) => {
          queue = queue.then(() => handle(agent.id, agent.name, message)).catch(failWith);
        });
      },
      (error: unknown) => {
        const status = statusOf(error);
        metrics.agentStreamRejections.labels(isAppError(error) ? error.code : "internal").inc();
        logger.warn({ peer, reason: status.details }, "agent stream refused");
        fail(status.code, status.details);
      },
    );

    async function handle(agentId: string, agentName: string, message: ConnectRequest): Promise<void> {
      if (ended) return;
      const kind = message.kind;
      if (!session) {
        if (kind.case !== "hello") throw new AppError("bad_request", "the first message on the stream must be Hello");
        clearTimeout(helloTimer);
        const hello = kind.value;
        const { inputs, rejected: invalid } = readAnnouncement(hello);
        const result = await store.resources.replaceForAgent(agentId, inputs, () => randomId());
        const connectedAt = now();
        await store.agents.markConnected(
          agentId,
          {
            version: hello.agentVersion.slice(0, 64),
            hostname: hello.hostname.slice(0, 255),
            connectedTo: deps.replicaId,
            bundleVersion: hello.bundleVersion,
          },
          connectedAt,
        );
        if (ended) return;
        session = {
          agentId,
          agentName,
          connectedAt,
          call,
          close: (code, details) => fail(code, details),
          sent: new Map(),
        };
        sessions.get(agentId)?.close(grpc.status.ABORTED, "replaced by a newer connection of the same agent");
        sessions.set(agentId, session);
        metrics.agentStreams.set(sessions.size);
        logger.info(
          { agentId, agentName, peer, version: hello.agentVersion, resources: result.accepted.length },
          "agent connected",
        );
        send(
          create(ConnectResponseSchema, {
            kind: {
              case: "welcome",
              value: {
                agentId,
                agentName,
                serverTime: timestampFromDate(now()),
                heartbeatIntervalSeconds: deps.heartbeatSeconds,
                auditAckedSeq: (await store.agents.findById(agentId))?.auditSeq ?? 0n,
              },
            },
          }),
        );
        for (const r of [...invalid, ...result.rejected]) {
          logger.warn({ agentId, resource: r.name, reason: r.reason }, "resource rejected");
          send(create(ConnectResponseSchema, { kind: { case: "resourceRejected", value: r } }));
        }
        armLiveness();
        await pushBundle(session);
        return;
      }
      armLiveness();
      switch (kind.case) {
        case "heartbeat":
          // Also a safety net for revocations made on another replica without a shared bus.
          if (!(await store.agents.markSeen(agentId, now()))) {
            throw new AppError("agent_revoked", "agent revoked: the agent no longer exists or was revoked");
          }
          send(
            create(ConnectResponseSchema, {
              kind: { case: "heartbeatAck", value: { serverTime: timestampFromDate(now()) } },
            }),
          );
          return;
        case "bundleAck": {
          const ack = kind.value;
          const sent = session.sent.get(ack.version);
          for (const version of session.sent.keys()) if (version <= ack.version) session.sent.delete(version);
          if (ack.applied) {
            // The agent now trusts exactly the keys that bundle carried.
            if (sent) session.trustedKeyIds = new Set(sent.bundleKeyIds);
            await store.agents.recordBundleApplied(agentId, {
              version: ack.version,
              ...(sent ? { policyRevision: sent.policyRevision, keyId: sent.keyId } : {}),
            });
            logger.info(
              {
                agentId,
                version: ack.version.toString(),
                policyRevision: sent?.policyRevision.toString(),
                keyId: sent?.keyId,
              },
              "agent enforces bundle",
            );
            return;
          }
          metrics.bundleFailures.labels("rejected").inc();
          const unknownKey = ack.error.includes("unknown key");
          // Sign the next one with the oldest active key again (what the agent trusts is unclear).
          if (unknownKey) session.trustedKeyIds = undefined;
          const reason =
            `the agent rejected bundle ${ack.version}: ${ack.error}` +
            (unknownKey && sent?.transition
              ? " (it trusts none of the control plane's active bundle keys: it was offline through a bundle-key " +
                "rotation for longer than bundles.keyGraceSeconds; re-enrol it with a new enrolment token, " +
                "POST /api/v1/agents/{id}/enrolment-token)"
              : "");
          await store.agents.setBundleError(agentId, ack.version, reason, now());
          logger.warn(
            { agentId, version: ack.version.toString(), error: ack.error, keyId: sent?.keyId },
            "agent rejected a bundle",
          );
          return;
        }
        case "hello":
          throw new AppError("bad_request", "Hello may be sent only once per stream");
        case "auditBatch": {
          if (kind.value.events.length > MAX_AUDIT_BATCH)
            throw new AppError("bad_request", `audit batches are limited to ${MAX_AUDIT_BATCH} events`);
          // Pipelined: the next messages are read while this batch is stored, so an agent's batches
          // in flight reach the store together (one group commit); acks go out in arrival order, and
          // none after a batch that failed (the stream fails: the agent resends what is unacked).
          const ingesting = deps.audit.ingest(agentId, kind.value.events);
          ingesting.catch(() => undefined); // handled through the ack chain below
          pendingIngests++;
          acks = acks.then(async () => {
            const { stored, lastSeq } = await ingesting.finally(() => pendingIngests--);
            send(create(ConnectResponseSchema, { kind: { case: "auditAck", value: { ackedSeq: lastSeq } } }));
            if (stored > 0) metrics.auditEvents.inc(stored);
            if (stored > 0)
              void deps.bus.publish("audit.ingested", { agentId, count: stored, lastSeq: lastSeq.toString() });
          });
          acks.catch(failWith);
          // Backpressure: at most MAX_PIPELINED_BATCHES stored at a time per stream.
          if (pendingIngests >= MAX_PIPELINED_BATCHES) await acks;
          return;
        }
        case "approvalRequest":
        case "sessionEnded":
          // Handled by the audit and approvals modules as they land; accepted and ignored until then.
          logger.debug({ agentId, kind: kind.case }, "message kind not handled yet");
          return;
        default:
          throw new AppError("bad_request", "unknown message kind");
      }
    }
  }

  server.addService(
    agentServiceDefinition as unknown as grpc.ServiceDefinition,
    { enrol, connect } as unknown as grpc.UntypedServiceImplementation,
  );

  return {
    server,
    connectedAgentIds: () => [...sessions.keys()],
    send(agentId, message) {
      const session = sessions.get(agentId);
      if (!session) return false;
      session.call.write(message);
      return true;
    },
    pushAll() {
      fanOut([...sessions.values()]);
    },
    closeAll(details) {
      clearInterval(refreshTimer);
      for (const session of [...sessions.values()]) session.close(grpc.status.UNAVAILABLE, details);
    },
  };
}
