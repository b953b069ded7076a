/**
 * Webhook sink: POSTs batches of audit events, as a JSON array of event views, to an http(s)
 * endpoint (a SIEM collector), signed Stripe-style so the receiver can check origin and reject
 * replays:
 *
 *   Moat-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>
 *   Moat-Delivery: <id, the same whenever the same events are sent again>
 *   Moat-Event-Count: <events in the body>
 *
 * 2xx is delivered. Anything else (including 4xx: a misconfigured receiver must not make audit
 * disappear) is a failure the worker retries; 413 makes the next attempt carry fewer events.
 * Redirects are not followed. The signing key and the URL's query are never logged.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import type { AuditView } from "../services/audit.js";
import { VERSION } from "../version.js";
import type { ResolvedWebhookSink } from "./config.js";
import { deliveryId, SinkError, type AuditSink } from "./sink.js";

/** Most response bytes kept for the failure message. */
const MAX_RESPONSE_TEXT = 200;

/** The Moat-Signature value for `body` sent at `timestamp` (Unix seconds). */
export function signWebhookBody(key: string | Buffer, timestamp: number, body: string | Buffer): string {
  const mac = createHmac("sha256", key).update(`${timestamp}.`).update(body).digest("hex");
  return `t=${timestamp},v1=${mac}`;
}

/**
 * Receiver side: true when `header` is a valid Moat-Signature of `body` under `key`, made at most
 * `toleranceSeconds` from `nowSeconds`.
 */
export function verifyWebhookSignature(
  header: string,
  body: string | Buffer,
  key: string | Buffer,
  nowSeconds = Math.floor(Date.now() / 1000),
  toleranceSeconds = 300,
): boolean {
  const parts = new Map(
    header.split(",").map((p) => {
      const i = p.indexOf("=");
      return [p.slice(0, i).trim(), p.slice(i + 1).trim()] as const;
    }),
  );
  const t = Number(parts.get("t"));
  const v1 = parts.get("v1") ?? "";
  if (!Number.isInteger(t) || Math.abs(nowSeconds - t) > toleranceSeconds || !/^[0-9a-f]{64}$/.test(v1)) return false;
  const expected = Buffer.from(createHmac("sha256", key).update(`${t}.`).update(body).digest("hex"));
  return timingSafeEqual(expected, Buffer.from(v1));
}

/** The longest prefix of `events` whose JSON array stays within `maxBytes` (at least one event). */
export function encodeBatch(events: AuditView[], maxBytes: number): { body: Buffer; count: number } {
  const parts: string[] = [];
  let size = 2;
  for (const event of events) {
    const json = JSON.stringify(event);
    const bytes = Buffer.byteLength(json) + (parts.length > 0 ? 1 : 0);
    if (parts.length > 0 && size + bytes > maxBytes) break;
    parts.push(json);
    size += bytes;
  }
  return { body: Buffer.from(`[${parts.join(",")}]`), count: parts.length };
}

function post(
  url: URL,
  agent: http.Agent,
  headers: Record<string, string>,
  body: Buffer,
  timeoutMs: number,
): Promise<{ status: number; text: string }> {
  const request = url.protocol === "https:" ? https.request : http.request;
  return new Promise((resolve, reject) => {
    const req = request(url, { method: "POST", agent, headers: { ...headers, "Content-Length": body.length } });
    const timer = setTimeout(
      () => req.destroy(new SinkError(`no answer within ${timeoutMs} ms`, "timeout")),
      timeoutMs,
    );
    req.on("error", (error) => {
      clearTimeout(timer);
      reject(
        error instanceof SinkError
          ? error
          : new SinkError(`could not reach the receiver: ${error.message}`, "unavailable", { cause: error }),
      );
    });
    req.on("response", (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        if (text.length < MAX_RESPONSE_TEXT) text += chunk;
      });
      res.on("end", () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, text: text.slice(0, MAX_RESPONSE_TEXT).replace(/\s+/g, " ").trim() });
      });
      res.on("error", (error) => {
        clearTimeout(timer);
        reject(new SinkError(`the response broke off: ${error.message}`, "unavailable", { cause: error }));
      });
    });
    req.end(body);
  });
}

/** A webhook sink's id (its cursor and lease are stored under it): renaming a webhook starts a new sink. */
export const webhookSinkId = (name: string): string => `webhook.${name}`;

export function createWebhookSink(
  config: ResolvedWebhookSink,
  options: { now?: () => Date } = {},
): AuditSink & { readonly target: string } {
  const now = options.now ?? (() => new Date());
  const url = new URL(config.url);
  const ca = config.caFile ? readFileSync(config.caFile) : undefined;
  const agent =
    url.protocol === "https:"
      ? new https.Agent({ keepAlive: true, maxSockets: 1, ...(ca ? { ca } : {}) })
      : new http.Agent({ keepAlive: true, maxSockets: 1 });
  const key = (): Buffer => {
    if (config.secret !== undefined) return Buffer.from(config.secret);
    try {
      return Buffer.from(readFileSync(config.secretFile as string, "utf8").trim());
    } catch (error) {
      throw new SinkError(`could not read the signing key file: ${(error as Error).message}`, "error");
    }
  };
  // A receiver that echoes the request must not put our header values (tokens) or the key into a log line.
  const confidential = [
    ...Object.values(config.headers ?? {}),
    ...url.searchParams.values(),
    config.secret ?? "",
  ].filter((v) => v.length >= 4);
  const redact = (text: string) => confidential.reduce((t, v) => t.split(v).join("[redacted]"), text);
  return {
    id: webhookSinkId(config.name),
    /** Scheme, host and path, for logs (never the query, which may carry a token). */
    target: `${url.origin}${url.pathname}`,
    async deliver(events) {
      const { body, count } = encodeBatch(events, config.maxBodyBytes);
      const signingKey = key();
      if (signingKey.length === 0) throw new SinkError("the signing key is empty", "error");
      const headers: Record<string, string> = {
        ...(config.headers ?? {}),
        "Content-Type": "application/json",
        "User-Agent": `moat-control-plane/${VERSION}`,
        "Moat-Signature": signWebhookBody(signingKey, Math.floor(now().getTime() / 1000), body),
        "Moat-Delivery": deliveryId(events.slice(0, count)),
        "Moat-Event-Count": String(count),
      };
      const { status, text } = await post(url, agent, headers, body, config.timeoutMs);
      if (status >= 200 && status < 300) return count;
      const detail = `the receiver answered ${status}${text ? `: ${redact(text)}` : ""}`;
      if (status === 413) throw new SinkError(detail, "http_4xx", { tooLarge: count > 1 });
      throw new SinkError(detail, status >= 500 ? "http_5xx" : status >= 400 ? "http_4xx" : "http_other");
    },
    async close() {
      agent.destroy();
    },
  };
}
