#!/usr/bin/env node
/**
 * moat-control-plane: the composition root as a process. Reads `--config FILE` (optional) and the
 * environment, starts the control plane, shows the bootstrap admin key once, handles signals.
 *
 * Under the `npm start` launcher (an IPC channel is present) it reports readiness and secrets over
 * IPC instead of the terminal, so they never land in a log file.
 */
import { parseArgs } from "node:util";
import { ConfigError } from "@moat/common";
import { loadControlPlaneConfig, type ControlPlaneConfig } from "./config.js";
import { createIdentityService } from "./services/identity.js";
import { openStore } from "./store/index.js";
import { startControlPlane } from "./server.js";
import { VERSION } from "./version.js";

const usage = `usage: moat-control-plane [--config FILE]
       moat-control-plane admin-key [--config FILE] [--email EMAIL]

Starts the Moat control plane (REST API + agent gRPC channel).
admin-key: issues a new API key for an admin user (default: the bootstrap admin) directly in the
store and prints it once; for operators on the control-plane host who lost the bootstrap key.
Configuration: FILE (YAML) then environment variables; see docs/configuration.md.`;

async function issueAdminKey(config: ControlPlaneConfig, email: string): Promise<void> {
  const store = await openStore(config.databaseUrl);
  try {
    const identity = createIdentityService({ store, now: () => new Date() });
    process.stdout.write(`${await identity.issueAdminKey(email, "recovery")}\n`);
  } finally {
    await store.close();
  }
}

async function main(): Promise<void> {
  let args;
  try {
    args = parseArgs({
      allowPositionals: true,
      options: {
        config: { type: "string", short: "c" },
        email: { type: "string" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean" },
      },
    });
    if (args.positionals.length > 1 || (args.positionals[0] && args.positionals[0] !== "admin-key")) {
      throw new Error(`unknown command: ${args.positionals.join(" ")}`);
    }
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n${usage}\n`);
    process.exit(2);
  }
  if (args.values.help) {
    process.stdout.write(`${usage}\n`);
    return;
  }
  if (args.values.version) {
    process.stdout.write(`${VERSION}\n`);
    return;
  }

  let config;
  try {
    config = loadControlPlaneConfig(args.values.config ? { file: args.values.config } : {});
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`moat-control-plane: ${error.message}\n`);
      process.exit(78); // EX_CONFIG
    }
    throw error;
  }

  if (args.positionals[0] === "admin-key") {
    try {
      await issueAdminKey(config, args.values.email ?? config.bootstrap.adminEmail);
    } catch (error) {
      process.stderr.write(`moat-control-plane: ${(error as Error).message}\n`);
      process.exit(1);
    }
    return;
  }

  const cp = await startControlPlane(
    config,
    process.env.MOAT_MASTER_KEY ? { masterKey: process.env.MOAT_MASTER_KEY } : {},
  );
  const ipc = typeof process.send === "function";

  if (ipc) {
    process.send?.({
      type: "moat.ready",
      httpUrl: cp.httpUrl,
      grpcAddress: cp.grpcAddress,
      caFingerprint: cp.caFingerprint,
      bootstrap: cp.bootstrap ?? null,
    });
    process.on("message", (message: { type?: string }) => {
      if (message?.type === "moat.localAgentToken") {
        cp.issueLocalAgentToken().then(
          (token) => process.send?.({ type: "moat.localAgentToken", token }),
          (error: unknown) => process.send?.({ type: "moat.localAgentToken", error: (error as Error).message }),
        );
      }
    });
  } else if (cp.bootstrap && !config.bootstrap.adminKeyFile) {
    process.stderr.write(
      [
        "",
        "  Moat control plane: first start.",
        `  Bootstrap admin: ${cp.bootstrap.email}`,
        `  API key (shown once, stored only as a hash):`,
        `    ${cp.bootstrap.apiKey}`,
        `  Log in with:  moat login --server ${cp.httpUrl} --api-key <key>`,
        "",
      ].join("\n") + "\n",
    );
  }

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    cp.logger.info({ signal }, "shutting down");
    const force = setTimeout(() => process.exit(1), 10_000);
    force.unref();
    cp.close().then(
      () => process.exit(0),
      (error: unknown) => {
        cp.logger.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  if (ipc) process.on("disconnect", () => stop("parent exited"));
}

main().catch((error: unknown) => {
  process.stderr.write(`moat-control-plane: failed to start: ${(error as Error).message}\n`);
  if ((error as Error).cause)
    process.stderr.write(`  cause: ${String(((error as Error).cause as Error).message ?? (error as Error).cause)}\n`);
  process.exit(1);
});
