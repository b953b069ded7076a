import { describe, expect, it, vi } from "vitest";
import { createInProcessBus } from "./bus.js";

describe("in-process bus", () => {
  it("delivers to every subscriber of the topic only, until unsubscribed", async () => {
    const bus = createInProcessBus(() => undefined);
    const a = vi.fn();
    const b = vi.fn();
    const other = vi.fn();
    const unsubscribeA = bus.subscribe("agent.revoked", a);
    bus.subscribe("agent.revoked", b);
    bus.subscribe("bundle.changed", other);
    await bus.publish("agent.revoked", { agentId: "x", reason: "r" });
    expect(a).toHaveBeenCalledWith({ agentId: "x", reason: "r" });
    expect(b).toHaveBeenCalledTimes(1);
    expect(other).not.toHaveBeenCalled();
    unsubscribeA();
    await bus.publish("agent.revoked", { agentId: "y", reason: "r" });
    expect(a).toHaveBeenCalledTimes(1);
    expect(b).toHaveBeenCalledTimes(2);
  });

  it("reports a failing handler without failing the publisher or other handlers", async () => {
    const errors: unknown[] = [];
    const bus = createInProcessBus((_topic, error) => errors.push(error));
    const after = vi.fn();
    bus.subscribe("bundle.changed", () => {
      throw new Error("boom");
    });
    bus.subscribe("bundle.changed", after);
    await expect(bus.publish("bundle.changed", { agentIds: "*" })).resolves.toBeUndefined();
    expect(after).toHaveBeenCalled();
    expect(errors).toHaveLength(1);
  });
});
