/** Prometheus metrics of the control plane (one registry per app instance, so tests stay isolated). */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export interface ControlPlaneMetrics {
  registry: Registry;
  httpRequests: Histogram<"method" | "route" | "status">;
  agentStreams: Gauge;
  agentStreamRejections: Counter<"reason">;
  enrolments: Counter<"result">;
  auditEvents: Counter;
  bundleFailures: Counter<"reason">;
}

export function createMetrics(options: { defaultMetrics?: boolean } = {}): ControlPlaneMetrics {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: "moat_cp_" });
  return {
    registry,
    httpRequests: new Histogram({
      name: "moat_cp_http_request_duration_seconds",
      help: "REST request duration by route and status",
      labelNames: ["method", "route", "status"],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
      registers: [registry],
    }),
    agentStreams: new Gauge({
      name: "moat_cp_agent_streams",
      help: "Agent streams connected to this replica",
      registers: [registry],
    }),
    agentStreamRejections: new Counter({
      name: "moat_cp_agent_stream_rejections_total",
      help: "Agent streams refused, by reason",
      labelNames: ["reason"],
      registers: [registry],
    }),
    auditEvents: new Counter({
      name: "moat_cp_audit_events_ingested_total",
      help: "Audit events stored (duplicates of resent batches not counted)",
      registers: [registry],
    }),
    bundleFailures: new Counter({
      name: "moat_cp_bundle_failures_total",
      help: "Bundles not delivered (too_large: over the size budget, not sent) or refused by the agent (rejected)",
      labelNames: ["reason"],
      registers: [registry],
    }),
    enrolments: new Counter({
      name: "moat_cp_agent_enrolments_total",
      help: "Agent enrolment attempts by result",
      labelNames: ["result"],
      registers: [registry],
    }),
  };
}
