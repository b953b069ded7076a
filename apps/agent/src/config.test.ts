import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { tempDir } from "@moat/testkit";
import { loadAgentConfig } from "./config.js";

function load(yaml: string, env: NodeJS.ProcessEnv = {}) {
  const dir = tempDir();
  const file = join(dir, "agent.yaml");
  writeFileSync(file, yaml);
  return loadAgentConfig({ file, env, cwd: dir });
}

function problemsOf(yaml: string, env: NodeJS.ProcessEnv = {}): string {
  try {
    load(yaml, env);
  } catch (error) {
    return (error as Error).message;
  }
  return "";
}

describe("agent config", () => {
  it("fills defaults", () => {
    const config = load("");
    expect(config.admin).toEqual({ enabled: true, host: "127.0.0.1", port: 7072, decisionEndpoint: false });
    expect(config.reconnect).toEqual({ initialDelayMs: 250, maxDelayMs: 4000 });
    expect(config.resources).toEqual([]);
    expect(config.shutdown).toEqual({ drainSeconds: 0 });
    expect(config.controlPlane.plaintext).toBe(false);
  });

  it("reads resources with labels", () => {
    const config = load(
      "resources:\n  - name: prod-db\n    type: postgres\n    listen: '[::1]:6432'\n    labels: { env: prod }\n",
    );
    expect(config.resources[0]).toEqual({
      name: "prod-db",
      type: "postgres",
      listen: "[::1]:6432",
      labels: { env: "prod" },
      description: "",
    });
  });

  it("env overrides the file", () => {
    const config = load("admin:\n  port: 9000\n", {
      MOAT_AGENT_ADMIN_PORT: "9100",
      MOAT_AGENT_ENROLMENT_TOKEN: "moat_et1_x",
    });
    expect(config.admin.port).toBe(9100);
    expect(config.enrolmentToken).toBe("moat_et1_x");
    expect(load("shutdown:\n  drainSeconds: 5\n", {}).shutdown.drainSeconds).toBe(5);
    expect(load("shutdown:\n  drainSeconds: 5\n", { MOAT_AGENT_DRAIN_SECONDS: "30" }).shutdown.drainSeconds).toBe(30);
  });

  it("names each bad field", () => {
    expect(problemsOf("resourcez: []\n")).toContain("resourcez: unknown field");
    expect(problemsOf("admin:\n  port: -1\n")).toContain("admin.port");
    expect(
      problemsOf(
        "resources:\n  - { name: a, type: postgres, listen: 'x:1' }\n  - { name: a, type: ssh, listen: 'y:2' }\n",
      ),
    ).toContain('resources.1.name: "a" is used twice');
    expect(problemsOf("reconnect:\n  initialDelayMs: 5000\n  maxDelayMs: 1000\n")).toContain("reconnect.maxDelayMs");
    expect(problemsOf("enrolmentToken: a\nenrolmentTokenFile: b\n")).toContain("set one, not both");
    expect(problemsOf("shutdown:\n  drainSeconds: -1\n")).toContain("shutdown.drainSeconds");
    expect(problemsOf("", { MOAT_AGENT_ADMIN_PORT: "many" })).toContain("MOAT_AGENT_ADMIN_PORT: must be a number");
    expect(problemsOf("- just\n- a list\n")).toContain("top level must be a mapping");
    expect(problemsOf("a: [unclosed\n")).toContain("not valid YAML");
  });
});
