/** Prometheus metrics of the audit sinks, registered on the control plane's registry. Label `sink`: "webhook.<name>" or "nats". */
import { Counter, Gauge, type Registry } from "prom-client";

export interface SinkMetrics {
  delivered: Counter<"sink">;
  failures: Counter<"sink" | "reason">;
  skipped: Counter<"sink">;
  lagEvents: Gauge<"sink">;
  lagSeconds: Gauge<"sink">;
  cursorTimestamp: Gauge<"sink">;
  leader: Gauge<"sink">;
}

export function createSinkMetrics(registry: Registry): SinkMetrics {
  const registers = [registry];
  return {
    delivered: new Counter({
      name: "moat_cp_audit_sink_delivered_events_total",
      help: "Audit events a sink delivered (acknowledged by the receiver)",
      labelNames: ["sink"],
      registers,
    }),
    failures: new Counter({
      name: "moat_cp_audit_sink_failures_total",
      help: "Failed delivery attempts (each is retried), by reason",
      labelNames: ["sink", "reason"],
      registers,
    }),
    skipped: new Counter({
      name: "moat_cp_audit_sink_skipped_events_total",
      help: "Sequence numbers a sink moved past because they never arrived (agent drop-oldest, or deleted before delivery)",
      labelNames: ["sink"],
      registers,
    }),
    lagEvents: new Gauge({
      name: "moat_cp_audit_sink_lag_events",
      help: "Stored audit events the sink has not delivered yet (reported by the replica delivering it)",
      labelNames: ["sink"],
      registers,
    }),
    lagSeconds: new Gauge({
      name: "moat_cp_audit_sink_lag_seconds",
      help: "Age (since it was stored) of the oldest event the sink is about to deliver; 0 when caught up",
      labelNames: ["sink"],
      registers,
    }),
    cursorTimestamp: new Gauge({
      name: "moat_cp_audit_sink_cursor_timestamp_seconds",
      help: "When the last event the sink delivered was stored (Unix seconds): the cursor's position in time",
      labelNames: ["sink"],
      registers,
    }),
    leader: new Gauge({
      name: "moat_cp_audit_sink_leader",
      help: "1 when this replica holds the sink's lease and delivers it",
      labelNames: ["sink"],
      registers,
    }),
  };
}
