/**
 * The agent's gRPC client for AgentService: channel credentials (TLS pinned to the control plane's
 * CA, or loopback plaintext), CA discovery by fingerprint, and a typed wrapper over the generic
 * grpc-js client.
 */
import { connect as tlsConnect, type PeerCertificate, type DetailedPeerCertificate } from "node:tls";
import { isIP } from "node:net";
import * as grpc from "@grpc/grpc-js";
import { certificateFingerprint } from "@moat/pki";
import {
  agentServiceDefinition,
  type ConnectRequest,
  type ConnectResponse,
  type EnrolRequest,
  type EnrolResponse,
} from "@moat/proto";

export function parseHostPort(address: string): { host: string; port: number } {
  const match = /^\[?([^\]]+?)\]?:(\d+)$/.exec(address);
  if (!match) throw new Error(`"${address}" is not host:port`);
  return { host: match[1] as string, port: Number(match[2]) };
}

export function isLoopbackHost(host: string): boolean {
  return host === "localhost" || host === "::1" || host.startsWith("127.");
}

function toPem(der: Buffer): string {
  const body = der
    .toString("base64")
    .replace(/(.{64})/g, "$1\n")
    .trimEnd();
  return `-----BEGIN CERTIFICATE-----\n${body}\n-----END CERTIFICATE-----\n`;
}

/**
 * Connects once with TLS (no verification yet), walks the certificate chain the server presents and
 * returns the certificate whose SHA-256 matches `fingerprint`. Nothing is sent over this connection.
 * The real channel then verifies the server against that CA.
 */
export function fetchPinnedCa(
  address: string,
  fingerprint: string,
  options: { serverName?: string; timeoutMs?: number } = {},
): Promise<string> {
  const { host, port } = parseHostPort(address);
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({
      host,
      port,
      rejectUnauthorized: false,
      ALPNProtocols: ["h2"],
      ...(isIP(host) ? {} : { servername: options.serverName ?? host }),
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no TLS answer from ${address} within ${options.timeoutMs ?? 10_000} ms`));
    }, options.timeoutMs ?? 10_000);
    socket.once("error", (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot reach the control plane at ${address}: ${error.message}`));
    });
    socket.once("secureConnect", () => {
      clearTimeout(timer);
      let cert: PeerCertificate | DetailedPeerCertificate | undefined = socket.getPeerCertificate(true);
      const seen = new Set<string>();
      while (cert && cert.raw && !seen.has(cert.fingerprint256)) {
        seen.add(cert.fingerprint256);
        if (certificateFingerprint(cert.raw) === fingerprint) {
          socket.end();
          resolve(toPem(cert.raw));
          return;
        }
        cert = (cert as DetailedPeerCertificate).issuerCertificate;
      }
      socket.destroy();
      reject(
        new Error(
          `the control plane at ${address} did not present the CA pinned in the enrolment token (possible interception)`,
        ),
      );
    });
  });
}

export interface ChannelOptions {
  address: string;
  caPem: string;
  plaintext: boolean;
  serverName?: string;
  maxMessageBytes: number;
}

export interface AgentServiceClient {
  enrol(request: EnrolRequest, deadline: Date): Promise<EnrolResponse>;
  connect(credential: string): grpc.ClientDuplexStream<ConnectRequest, ConnectResponse>;
  close(): void;
}

const GenericClient = grpc.makeGenericClientConstructor(
  agentServiceDefinition as unknown as grpc.ServiceDefinition,
  "AgentService",
);

export function createAgentServiceClient(options: ChannelOptions): AgentServiceClient {
  const { host } = parseHostPort(options.address);
  if (options.plaintext && !isLoopbackHost(host))
    throw new Error("plaintext to the control plane is allowed only on loopback");
  const credentials = options.plaintext
    ? grpc.credentials.createInsecure()
    : grpc.credentials.createSsl(Buffer.from(options.caPem));
  const client = new GenericClient(options.address, credentials, {
    "grpc.max_receive_message_length": options.maxMessageBytes,
    "grpc.max_send_message_length": options.maxMessageBytes,
    "grpc.keepalive_time_ms": 20_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 1,
    // Reconnects are ours (with jitter); keep grpc-js's own backoff short so it does not add to them.
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 2_000,
    ...(options.serverName ? { "grpc.ssl_target_name_override": options.serverName } : {}),
  }) as unknown as grpc.Client & {
    enrol(
      request: EnrolRequest,
      metadata: grpc.Metadata,
      options: grpc.CallOptions,
      callback: (error: grpc.ServiceError | null, response?: EnrolResponse) => void,
    ): void;
    connect(metadata: grpc.Metadata): grpc.ClientDuplexStream<ConnectRequest, ConnectResponse>;
  };
  return {
    enrol(request, deadline) {
      return new Promise((resolve, reject) => {
        client.enrol(request, new grpc.Metadata(), { deadline }, (error, response) =>
          error ? reject(error) : resolve(response as EnrolResponse),
        );
      });
    },
    connect(credential) {
      const metadata = new grpc.Metadata();
      metadata.set("authorization", `Bearer ${credential}`);
      return client.connect(metadata);
    },
    close: () => client.close(),
  };
}
