import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { tempDir } from "@moat/testkit";
import { loadControlPlaneConfig } from "./config.js";

describe("control-plane config", () => {
  it("has working defaults", () => {
    const config = loadControlPlaneConfig({ env: {}, cwd: "/srv" });
    expect(config.http.port).toBe(7070);
    expect(config.grpc.port).toBe(7071);
    expect(config.grpc.plaintext).toBe(false);
    expect(config.dataDir).toBe("/srv/.moat/control-plane");
    expect(config.databaseUrl).toBe("file:/srv/.moat/control-plane/moat.db");
  });

  it("applies env overrides over the file", () => {
    const dir = tempDir();
    const file = join(dir, "cp.yaml");
    writeFileSync(file, "http:\n  port: 9000\ngrpc:\n  port: 9001\n");
    const config = loadControlPlaneConfig({ file, env: { MOAT_GRPC_PORT: "9100", DATABASE_URL: "postgresql://x/y" } });
    expect(config.http.port).toBe(9000);
    expect(config.grpc.port).toBe(9100);
    expect(config.databaseUrl).toBe("postgresql://x/y");
  });

  it("names every bad field", () => {
    const dir = tempDir();
    const file = join(dir, "cp.yaml");
    writeFileSync(file, "http:\n  port: 70000\n  colour: blue\nlogLevel: loud\n");
    let message = "";
    try {
      loadControlPlaneConfig({ file, env: {} });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toContain("http.port");
    expect(message).toContain("http.colour: unknown field");
    expect(message).toContain("logLevel");
  });

  it("rejects plaintext gRPC off loopback and bad env numbers", () => {
    expect(() => loadControlPlaneConfig({ env: { MOAT_GRPC_PLAINTEXT: "true", MOAT_GRPC_HOST: "0.0.0.0" } })).toThrow(
      /grpc.plaintext: only allowed/,
    );
    expect(() => loadControlPlaneConfig({ env: { MOAT_HTTP_PORT: "eighty" } })).toThrow(
      /MOAT_HTTP_PORT: must be a number/,
    );
  });
});

describe("audit retention config", () => {
  it("keeps everything by default, and takes limits from the file or the environment", () => {
    expect(loadControlPlaneConfig({ env: {} }).audit.retention).toEqual({
      intervalMinutes: 60,
      batchSize: 5000,
      holdForSinks: true,
    });
    const dir = tempDir();
    const file = join(dir, "cp.yaml");
    writeFileSync(file, "audit:\n  retention:\n    days: 90\n    intervalMinutes: 15\n");
    expect(
      loadControlPlaneConfig({ file, env: { MOAT_AUDIT_RETENTION_MAX_EVENTS: "5000000" } }).audit.retention,
    ).toEqual({ days: 90, maxEvents: 5_000_000, intervalMinutes: 15, batchSize: 5000, holdForSinks: true });
    expect(() => loadControlPlaneConfig({ env: { MOAT_AUDIT_RETENTION_DAYS: "0" } })).toThrow(/audit.retention.days/);
  });
});
