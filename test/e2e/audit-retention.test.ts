/**
 * Audit retention on a real control-plane process: configured by environment, it prunes at start,
 * records an audit.retention event, and the pruned chain still verifies from its new start. The
 * JSON Lines export streams what is left.
 */
import { afterAll, describe, expect, it } from "vitest";
import { waitFor } from "@moat/testkit";
import { api, cleanup, startControlPlane } from "./support.js";

afterAll(cleanup);

interface Event {
  seq: string;
  type: string;
  message: string;
}

describe("audit retention", () => {
  it("prunes the oldest events at start, and the chain verifies from the retention horizon", async () => {
    const cp = await startControlPlane();
    for (let i = 0; i < 12; i++) {
      const res = await api(cp, "POST", "/api/v1/users", { email: `u${i}@example.com`, role: "member" });
      expect(res.status).toBe(201);
    }
    const exported = async (session: { url: string; adminKey: string }) => {
      const res = await fetch(`${session.url}/api/v1/audit/export?agent=control-plane`, {
        headers: { authorization: `Bearer ${session.adminKey}` },
      });
      expect(res.headers.get("content-type")).toBe("application/x-ndjson; charset=utf-8");
      return (await res.text())
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as Event);
    };
    const before = await exported(cp);
    expect(before.length).toBeGreaterThanOrEqual(12);
    await cp.stop("SIGTERM");

    const again = await startControlPlane({
      dataDir: cp.dataDir,
      httpPort: Number(new URL(cp.url).port),
      grpcPort: Number(cp.grpcAddress.split(":")[1]),
      env: { MOAT_AUDIT_RETENTION_MAX_EVENTS: "5" },
    });
    const session = { url: again.url, adminKey: cp.adminKey };
    const retention = async () =>
      (await api<{ items: Event[] }>(session, "GET", "/api/v1/audit/events?agent=control-plane&type=audit.retention"))
        .body.items;
    await waitFor(async () => (await retention()).length === 1, 15_000);
    expect((await retention())[0]?.message).toMatch(/^retention \(5 events\) pruned \d+ audit events of 1 chain\(s\)/);

    const after = await exported(session);
    // Five kept (a few more may go with ties at the cutoff's millisecond), plus the retention event.
    expect(after.length).toBeLessThanOrEqual(6);
    expect(after[after.length - 1]?.type).toBe("audit.retention");
    expect(after.map((e) => Number(e.seq))).toEqual(after.map((_, i) => Number(after[0]?.seq) + i));
    const verified = await api<{ ok: boolean; checked: number; horizon?: { seq: string } }>(
      session,
      "GET",
      "/api/v1/audit/verify?agent=control-plane",
    );
    expect(verified.body).toMatchObject({ ok: true, checked: after.length });
    expect(Number(verified.body.horizon?.seq)).toBe(Number(after[0]?.seq) - 1);
    expect((await api(session, "GET", "/api/v1/audit/sessions")).body).toEqual({ items: [] });
  });
});
