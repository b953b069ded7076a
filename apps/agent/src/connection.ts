/**
 * The agent's session with the control plane: one Connect stream at a time, reconnecting with
 * exponential backoff and jitter. Sends Hello (resources, bundle version) then heartbeats; hands
 * every control message to `onMessage`. A rejected credential (revoked agent) is fatal: retrying
 * cannot fix it, so `onFatal` is called and the loop stops.
 *
 * Enforcement never waits on this connection: the agent keeps serving from its last bundle while
 * the control plane is away.
 */
import * as grpc from "@grpc/grpc-js";
import { backoffDelay, type Logger } from "@moat/common";
import {
  create,
  ConnectRequestSchema,
  timestampFromDate,
  type ConnectRequest,
  type ConnectResponse,
  type Hello,
} from "@moat/proto";
import type { AgentServiceClient } from "./control-plane-client.js";

export type ConnectionState = "connecting" | "connected" | "backoff" | "stopped" | "rejected";

export interface ConnectionDeps {
  client: AgentServiceClient;
  credential: string;
  logger: Logger;
  hello: () => Hello;
  onMessage: (message: ConnectResponse, send: (message: ConnectRequest) => void) => void;
  onStateChange?: (state: ConnectionState) => void;
  onFatal: (reason: string) => void;
  heartbeatStats?: () => { activeSessions: number };
  backoff: { initialMs: number; maxMs: number };
}

export interface ControlPlaneConnection {
  start(): void;
  stop(): Promise<void>;
  state(): ConnectionState;
  /** Sends on the live stream; false when disconnected (callers keep their own durability). */
  send(message: ConnectRequest): boolean;
  reconnects(): number;
}

const FATAL = new Set([grpc.status.UNAUTHENTICATED, grpc.status.PERMISSION_DENIED]);

export function createControlPlaneConnection(deps: ConnectionDeps): ControlPlaneConnection {
  const { logger } = deps;
  let state: ConnectionState = "stopped";
  let stopped = true;
  let call: grpc.ClientDuplexStream<ConnectRequest, ConnectResponse> | undefined;
  let attempt = 0;
  let reconnectCount = 0;
  let retryTimer: NodeJS.Timeout | undefined;
  let heartbeatTimer: NodeJS.Timeout | undefined;
  let silenceTimer: NodeJS.Timeout | undefined;

  const setState = (next: ConnectionState) => {
    if (state === next) return;
    state = next;
    deps.onStateChange?.(next);
  };

  const clearTimers = () => {
    clearInterval(heartbeatTimer);
    clearTimeout(silenceTimer);
    heartbeatTimer = undefined;
    silenceTimer = undefined;
  };

  const scheduleReconnect = () => {
    if (stopped) return;
    const delay = backoffDelay(attempt++, deps.backoff);
    setState("backoff");
    logger.debug({ delayMs: delay, attempt }, "reconnecting to the control plane");
    retryTimer = setTimeout(open, delay);
  };

  function open() {
    if (stopped) return;
    setState("connecting");
    reconnectCount++;
    const current = deps.client.connect(deps.credential);
    call = current;
    let finished = false;
    let heartbeatMs = 10_000;

    const armSilence = () => {
      clearTimeout(silenceTimer);
      // Nothing from the control plane for three heartbeats: the connection is dead even if TCP says otherwise.
      silenceTimer = setTimeout(() => {
        logger.warn("no message from the control plane for three heartbeat intervals; reconnecting");
        current.cancel();
      }, heartbeatMs * 3);
      silenceTimer.unref();
    };

    const finish = (status: { code: number; details: string }) => {
      if (finished) return;
      finished = true;
      clearTimers();
      if (call === current) call = undefined;
      if (stopped) return;
      if (FATAL.has(status.code)) {
        stopped = true;
        setState("rejected");
        logger.error(
          { code: grpc.status[status.code], reason: status.details },
          "the control plane rejected this agent",
        );
        deps.onFatal(status.details);
        return;
      }
      logger.warn({ code: grpc.status[status.code], reason: status.details }, "control plane stream ended");
      scheduleReconnect();
    };

    current.on("data", (message: ConnectResponse) => {
      armSilence();
      if (message.kind.case === "welcome") {
        attempt = 0;
        heartbeatMs = Math.max(1, message.kind.value.heartbeatIntervalSeconds || 10) * 1000;
        setState("connected");
        logger.info(
          { agentId: message.kind.value.agentId, agentName: message.kind.value.agentName },
          "connected to the control plane",
        );
        clearInterval(heartbeatTimer);
        heartbeatTimer = setInterval(() => {
          const stats = deps.heartbeatStats?.() ?? { activeSessions: 0 };
          current.write(
            create(ConnectRequestSchema, {
              kind: {
                case: "heartbeat",
                value: { sentAt: timestampFromDate(new Date()), activeSessions: stats.activeSessions },
              },
            }),
          );
        }, heartbeatMs);
        heartbeatTimer.unref();
        armSilence();
      }
      try {
        deps.onMessage(message, (m) => current.write(m));
      } catch (error) {
        logger.error({ err: error, kind: message.kind.case }, "control message handler failed");
      }
    });
    current.on("status", (status: grpc.StatusObject) => finish(status));
    current.on("error", (error: grpc.ServiceError) =>
      finish({ code: error.code ?? grpc.status.UNKNOWN, details: error.details ?? error.message }),
    );
    // "status" always follows the end of a call (after "error" for a failure), so it alone decides.
    current.write(create(ConnectRequestSchema, { kind: { case: "hello", value: deps.hello() } }));
    armSilence();
  }

  return {
    start() {
      if (!stopped) return;
      stopped = false;
      attempt = 0;
      open();
    },
    async stop() {
      stopped = true;
      clearTimeout(retryTimer);
      clearTimers();
      if (call) {
        const closing = call;
        call = undefined;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            closing.cancel();
            resolve();
          }, 2000);
          closing.once("status", () => {
            clearTimeout(timer);
            resolve();
          });
          closing.end();
        });
      }
      setState("stopped");
    },
    state: () => state,
    send(message) {
      if (!call || state !== "connected") return false;
      call.write(message);
      return true;
    },
    reconnects: () => Math.max(0, reconnectCount - 1),
  };
}
