/**
 * The agent's local admin endpoint (loopback by default): /healthz for supervisors and /metrics
 * for Prometheus. Read-only; nothing here changes the agent.
 */
import { createServer, type Server, type ServerResponse } from "node:http";
import type { Registry } from "prom-client";

export interface AdminStatus {
  /**
   * "ok", or "failing-closed" while the agent has no bundle or its bundle has expired: it denies
   * every session and statement then (review 63: it said "ok"). Still HTTP 200: the process is
   * alive, and restarting it would not bring a bundle. "draining" while it stops with
   * shutdown.drainSeconds (new sessions refused).
   */
  status: "ok" | "failing-closed" | "draining";
  /** Why not "ok". */
  problem?: string;
  agentId: string;
  agentName: string;
  version: string;
  controlPlane: string;
  bundleVersion: string;
  bundleExpiresAt: string | null;
  auditUnshipped: string;
  resources: number;
}

const MAX_BODY = 64 * 1024;

function problem(res: ServerResponse, status: number, code: string, detail: string): void {
  res.writeHead(status, { "content-type": "application/problem+json" }).end(JSON.stringify({ status, code, detail }));
}

export function startAdminServer(options: {
  host: string;
  port: number;
  registry: Registry;
  status: () => AdminStatus;
  /** When set, POST /v1/decide answers policy decisions with the agent's bundle (operators, tests). */
  decide?: (body: unknown) => Promise<unknown>;
}): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method === "POST" && path === "/v1/decide" && options.decide) {
      const decide = options.decide;
      let size = 0;
      const chunks: Buffer[] = [];
      req.on("data", (chunk: Buffer) => {
        size += chunk.length;
        if (size > MAX_BODY) {
          problem(res, 413, "payload_too_large", `body over ${MAX_BODY} bytes`);
          req.destroy();
          return;
        }
        chunks.push(chunk);
      });
      req.on("end", () => {
        if (res.headersSent) return;
        let body: unknown;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        } catch {
          problem(res, 400, "bad_request", "the body is not valid JSON");
          return;
        }
        decide(body).then(
          (result) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(result)),
          (error: unknown) => problem(res, 400, "validation_failed", (error as Error).message),
        );
      });
      return;
    }
    if (req.method !== "GET") {
      res
        .writeHead(405, { "content-type": "application/problem+json" })
        .end(JSON.stringify({ status: 405, code: "method_not_allowed", detail: "GET only" }));
      return;
    }
    if (path === "/healthz") {
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(options.status()));
      return;
    }
    if (path === "/metrics") {
      options.registry.metrics().then(
        (body) => res.writeHead(200, { "content-type": options.registry.contentType }).end(body),
        () => res.writeHead(500).end(),
      );
      return;
    }
    res
      .writeHead(404, { "content-type": "application/problem+json" })
      .end(JSON.stringify({ status: 404, code: "not_found", detail: `no route ${path}` }));
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => {
      const address = server.address();
      resolve({
        server,
        port: typeof address === "object" && address ? address.port : options.port,
        close: () => new Promise((r) => server.close(() => r())),
      });
    });
  });
}
