/** The example configurations in deploy/ load with the real config loaders (docs stay true). */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadAgentConfig } from "../../apps/agent/dist/config.js";
import { loadControlPlaneConfig } from "../../apps/control-plane/dist/config.js";
import { repoRoot } from "./support.js";

describe("deploy/examples", () => {
  it("control-plane.yaml is valid", () => {
    const config = loadControlPlaneConfig({ file: join(repoRoot, "deploy/examples/control-plane.yaml"), env: {} });
    expect(config.grpc.advertiseAddress).toBe("cp.example.com:7071");
    expect(config.dataDir).toBe("/var/lib/moat");
  });
  it("agent.yaml is valid", () => {
    const config = loadAgentConfig({ file: join(repoRoot, "deploy/examples/agent.yaml"), env: {} });
    expect(config.resources.map((r) => r.name)).toEqual(["orders-db"]);
  });
});
