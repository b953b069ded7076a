/**
 * Getting an identity: reuse the one in the data dir, or exchange an enrolment token for a
 * credential (pinning the control plane's CA first). A token already used is not replayed; a new
 * token re-enrols (the control plane replaces the credential).
 */
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import * as grpc from "@grpc/grpc-js";
import { backoffDelay, decodeEnrolmentToken, hashSecret, type Logger } from "@moat/common";
import { certificateFingerprint } from "@moat/pki";
import { create, EnrolRequestSchema } from "@moat/proto";
import type { AgentConfig } from "./config.js";
import { createAgentServiceClient, fetchPinnedCa, isLoopbackHost, parseHostPort } from "./control-plane-client.js";
import { readIdentity, writeIdentity, type AgentIdentity } from "./identity-file.js";

/** A problem only an operator can fix (bad token, rejected credential): the agent exits. */
export class FatalAgentError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FatalAgentError";
  }
}

function readToken(config: AgentConfig): string | undefined {
  if (config.enrolmentToken) return config.enrolmentToken.trim();
  if (config.enrolmentTokenFile) {
    try {
      return readFileSync(config.enrolmentTokenFile, "utf8").trim();
    } catch (error) {
      throw new FatalAgentError(`cannot read enrolmentTokenFile: ${(error as Error).message}`);
    }
  }
  return undefined;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function ensureIdentity(options: {
  config: AgentConfig;
  logger: Logger;
  version: string;
  /** Stop waiting for an unreachable control plane (shutdown). */
  signal?: AbortSignal;
}): Promise<AgentIdentity> {
  const { config, logger } = options;
  const token = readToken(config);
  const existing = readIdentity(config.dataDir);
  if (existing && (!token || existing.enrolmentTokenHash === hashSecret(token))) {
    return config.controlPlane.address ? { ...existing, endpoint: config.controlPlane.address } : existing;
  }
  if (!token) {
    throw new FatalAgentError(
      "this agent is not enrolled: set enrolmentToken (or MOAT_AGENT_ENROLMENT_TOKEN) to a token from `moat agents create`",
    );
  }
  let decoded;
  try {
    decoded = decodeEnrolmentToken(token);
  } catch (error) {
    throw new FatalAgentError((error as Error).message);
  }
  const address = config.controlPlane.address ?? decoded.endpoint;
  const { host } = parseHostPort(address);
  const plaintext = config.controlPlane.plaintext;
  if (plaintext && !isLoopbackHost(host))
    throw new FatalAgentError("controlPlane.plaintext is allowed only for a loopback address");
  if (!plaintext && decoded.caFingerprint === "" && !config.controlPlane.caFile) {
    throw new FatalAgentError(
      "the control plane serves plaintext gRPC; set controlPlane.plaintext: true (loopback only)",
    );
  }

  for (let attempt = 0; ; attempt++) {
    try {
      let caPem = "";
      if (!plaintext) {
        if (config.controlPlane.caFile) {
          caPem = readFileSync(config.controlPlane.caFile, "utf8");
          if (decoded.caFingerprint && certificateFingerprint(caPem) !== decoded.caFingerprint) {
            throw new FatalAgentError("controlPlane.caFile is not the CA pinned in the enrolment token");
          }
        } else {
          caPem = await fetchPinnedCa(
            address,
            decoded.caFingerprint,
            config.controlPlane.serverName ? { serverName: config.controlPlane.serverName } : {},
          );
        }
      }
      const client = createAgentServiceClient({
        address,
        caPem,
        plaintext,
        maxMessageBytes: config.controlPlane.maxMessageBytes,
        ...(config.controlPlane.serverName ? { serverName: config.controlPlane.serverName } : {}),
      });
      try {
        const response = await client.enrol(
          create(EnrolRequestSchema, { enrolmentToken: token, agentVersion: options.version, hostname: hostname() }),
          new Date(Date.now() + 15_000),
        );
        const identity: AgentIdentity = {
          agentId: response.agentId,
          agentName: response.agentName,
          credential: response.credential,
          endpoint: address,
          caPem,
          enrolmentTokenHash: hashSecret(token),
          bundleKeys: response.bundleKeys.map((k) => ({
            keyId: k.keyId,
            algorithm: k.algorithm,
            jwk: JSON.parse(k.jwkJson) as Record<string, string>,
          })),
        };
        writeIdentity(config.dataDir, identity);
        logger.info(
          { agentId: identity.agentId, agentName: identity.agentName, endpoint: address },
          "enrolled with the control plane",
        );
        return identity;
      } finally {
        client.close();
      }
    } catch (error) {
      if (error instanceof FatalAgentError) throw error;
      const code = (error as grpc.ServiceError).code;
      if (code !== undefined && code !== grpc.status.UNAVAILABLE && code !== grpc.status.DEADLINE_EXCEEDED) {
        throw new FatalAgentError(
          `enrolment refused: ${(error as grpc.ServiceError).details || (error as Error).message}`,
        );
      }
      if ((error as Error).message.includes("did not present the CA pinned"))
        throw new FatalAgentError((error as Error).message);
      const delay = backoffDelay(attempt, {
        initialMs: config.reconnect.initialDelayMs,
        maxMs: config.reconnect.maxDelayMs,
      });
      logger.warn(
        { err: (error as Error).message, retryInMs: delay },
        "control plane unreachable for enrolment; retrying",
      );
      if (options.signal?.aborted) throw new FatalAgentError("stopped before enrolment completed");
      await sleep(delay);
    }
  }
}
