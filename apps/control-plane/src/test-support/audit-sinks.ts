/**
 * Test support for the audit sinks (not built into dist/): shipped-event builders and a real HTTP
 * receiver on 127.0.0.1 that checks Moat-Signature on its own (node:crypto, not Moat's helper) and
 * can be told to fail its first deliveries.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { AuditEventSchema, create, timestampFromDate, toBinary } from "@moat/proto";

/**
 * Events `from..to` (sequence numbers) of one agent, as shipped. `tag` (one Crockford base32
 * letter, e.g. "A") keeps ids unique across agents.
 */
export function shippedEvents(tag: string, from: number, to: number, type = "db.query"): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let seq = from; seq <= to; seq++) {
    out.push(
      toBinary(
        AuditEventSchema,
        create(AuditEventSchema, {
          id: `01JD${tag}${String(seq).padStart(21, "0")}`,
          seq: BigInt(seq),
          time: timestampFromDate(new Date(1_700_000_000_000 + seq)),
          type,
          actor: { user: "alice@example.com" },
          resource: "orders-db",
          message: `event ${tag}${seq}`,
          detail: type === "db.query" ? { case: "dbQuery", value: { text: `select ${seq}` } } : { case: undefined },
        }),
      ),
    );
  }
  return out;
}

export interface ReceivedEvent {
  id: string;
  agentId: string;
  seq: string;
  type: string;
  message: string;
  detail: unknown;
}

export interface ReceivedDelivery {
  status: number;
  deliveryId: string;
  count: number;
  signatureOk: boolean;
  headers: IncomingHttpHeaders;
  events: ReceivedEvent[];
}

export interface WebhookReceiver {
  url: string;
  /** Every request, answered or refused, in arrival order. */
  deliveries: ReceivedDelivery[];
  /** Events of the accepted (2xx) deliveries, in arrival order. */
  accepted(): ReceivedEvent[];
  /** Answer the next `n` requests with `status` (after checking them). */
  failNext(n: number, status?: number): void;
  close(): Promise<void>;
}

function signatureValid(header: string | undefined, body: Buffer, secret: string): boolean {
  const match = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header ?? "");
  if (!match) return false;
  const [, t, v1] = match as unknown as [string, string, string];
  if (Math.abs(Date.now() / 1000 - Number(t)) > 300) return false;
  const expected = createHmac("sha256", secret).update(`${t}.`).update(body).digest();
  return timingSafeEqual(expected, Buffer.from(v1, "hex"));
}

export async function startWebhookReceiver(secret: string): Promise<WebhookReceiver> {
  const deliveries: ReceivedDelivery[] = [];
  let failures: { left: number; status: number } = { left: 0, status: 503 };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const signatureOk = signatureValid(req.headers["moat-signature"] as string | undefined, body, secret);
      let events: ReceivedEvent[] = [];
      try {
        events = JSON.parse(body.toString("utf8")) as ReceivedEvent[];
      } catch {
        events = [];
      }
      let status = 200;
      if (!signatureOk || req.headers["content-type"] !== "application/json") status = 401;
      else if (failures.left > 0) {
        failures.left--;
        status = failures.status;
      }
      deliveries.push({
        status,
        deliveryId: String(req.headers["moat-delivery"]),
        count: Number(req.headers["moat-event-count"]),
        signatureOk,
        headers: req.headers,
        events,
      });
      // A refusal echoes the request line and headers, as some receivers do: they must not reach a log.
      res
        .writeHead(status, { "content-type": "text/plain" })
        .end(status === 200 ? "ok" : `refused ${req.url} ${JSON.stringify(req.headers)}`);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/moat/audit?token=query-secret`,
    deliveries,
    accepted: () => deliveries.filter((d) => d.status === 200).flatMap((d) => d.events),
    failNext(n, status = 503) {
      failures = { left: n, status };
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
