#!/usr/bin/env node
/**
 * moat-agent: runs beside the resources it protects. `--config agent.yaml` (plus environment).
 * Exit codes: 0 stopped, 1 crashed, 77 rejected by the control plane (revoked / bad credential:
 * restarting will not help), 78 bad configuration or enrolment token.
 */
import { parseArgs } from "node:util";
import { ConfigError } from "@moat/common";
import { startAgent } from "./agent.js";
import { loadAgentConfig } from "./config.js";
import { FatalAgentError } from "./enrol.js";
import { VERSION } from "./version.js";

// grpc-js sets the TLS SNI name to the dialled host even when it is an IP address (certificates
// are still verified against the IP SAN); Node warns about that once. Drop only that warning.
const emitWarning = process.emitWarning.bind(process);
process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
  const code = typeof rest[0] === "object" && rest[0] !== null ? (rest[0] as { code?: string }).code : rest[1];
  if (code === "DEP0123") return;
  (emitWarning as (...args: unknown[]) => void)(warning, ...rest);
}) as typeof process.emitWarning;

const usage = `usage: moat-agent --config FILE

Runs a Moat agent. See docs/configuration.md for the configuration reference.`;

async function main(): Promise<void> {
  let args;
  try {
    args = parseArgs({
      options: {
        config: { type: "string", short: "c" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean" },
      },
    });
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n${usage}\n`);
    process.exit(2);
  }
  if (args.values.help) return void process.stdout.write(`${usage}\n`);
  if (args.values.version) return void process.stdout.write(`${VERSION}\n`);

  let config;
  try {
    config = loadAgentConfig(args.values.config ? { file: args.values.config } : {});
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`moat-agent: ${error.message}\n`);
      process.exit(78);
    }
    throw error;
  }

  const abort = new AbortController();
  let agent: Awaited<ReturnType<typeof startAgent>> | undefined;
  let stopping = false;
  let exitCode = 0;
  const stop = (code: number, drainMs = 0) => {
    // (The control plane's rejection during a drain: its exit code wins.)
    if (code !== 0) exitCode = code;
    if (stopping) {
      // A second signal while sessions drain: they end now.
      if (agent) void agent.close();
      return;
    }
    stopping = true;
    abort.abort();
    const force = setTimeout(() => process.exit(exitCode || 1), drainMs + 5000);
    force.unref();
    if (agent && drainMs > 0) agent.logger.info({ drainSeconds: drainMs / 1000 }, "stopping: draining sessions");
    (agent ? agent.close({ drainMs }) : Promise.resolve()).finally(() => process.exit(exitCode));
  };
  const drainMs = config.shutdown.drainSeconds * 1000;
  process.on("SIGTERM", () => stop(0, drainMs));
  process.on("SIGINT", () => stop(0, drainMs));
  if (typeof process.send === "function") process.on("disconnect", () => stop(0));

  try {
    agent = await startAgent(config, { signal: abort.signal });
  } catch (error) {
    if (error instanceof FatalAgentError) {
      process.stderr.write(`moat-agent: ${error.message}\n`);
      process.exit(78);
    }
    throw error;
  }
  agent.logger.info({ agentId: agent.identity.agentId, adminPort: agent.adminPort, version: VERSION }, "agent started");
  const reason = await agent.rejected;
  process.stderr.write(
    `moat-agent: the control plane rejected this agent (${reason}).\n` +
      "  If it was revoked, create a new agent or issue a new enrolment token and set it in the config.\n",
  );
  stop(77);
}

main().catch((error: unknown) => {
  process.stderr.write(`moat-agent: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
