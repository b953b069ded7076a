/**
 * Test support (not built into dist/): a real control plane in-process for CLI tests, users with
 * API keys, and a fake terminal on stdin.
 */
import { PassThrough } from "node:stream";
import { generateSecret, randomId, SecretKind } from "@moat/common";
import { loadControlPlaneConfig } from "@moat/control-plane/config";
import { startControlPlane, type RunningControlPlane } from "@moat/control-plane/server";
import { tempDir } from "@moat/testkit";
import type { Input } from "../io.js";

/** A control plane on free ports with a throwaway data dir; `overrides` add config (e.g. `oidc`). */
export function startTestControlPlane(overrides: Record<string, unknown> = {}): Promise<RunningControlPlane> {
  const config = loadControlPlaneConfig({
    env: {},
    overrides: { dataDir: tempDir(), logLevel: "silent", http: { port: 0 }, grpc: { port: 0 }, ...overrides },
  });
  return startControlPlane(config);
}

/** The first-start admin API key of `cp`. */
export function bootstrapKey(cp: RunningControlPlane): string {
  if (!cp.bootstrap) throw new Error("expected a first start with a bootstrap admin key");
  return cp.bootstrap.apiKey;
}

/** A new user with `role` and an API key, created directly in the store. */
export async function addApiUser(
  cp: RunningControlPlane,
  role: "admin" | "auditor" | "reviewer" | "member",
): Promise<{ key: string; email: string; id: string }> {
  const email = `${role}-${randomId(4)}@example.com`;
  const user = await cp.store.users.create({ id: randomId(), email, displayName: role, role });
  const key = generateSecret(SecretKind.apiKey);
  await cp.store.apiKeys.create({ id: key.id, name: "test", hash: key.hash, userId: user.id });
  return { key: key.value, email, id: user.id };
}

/** A fake terminal on stdin: the answer is written after the CLI starts reading. */
export function fakeTty(answer: string): Input & { rawModes: boolean[] } {
  const stream = new PassThrough() as unknown as Input & { rawModes: boolean[] } & PassThrough;
  stream.isTTY = true;
  stream.rawModes = [];
  stream.setRawMode = (mode: boolean) => stream.rawModes.push(mode);
  setTimeout(() => stream.write(answer), 20);
  return stream;
}
