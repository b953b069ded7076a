/**
 * Access tokens end to end: issued by the control plane, verified by the agent alone with the keys
 * in its bundle; a revoked token or a disabled user is refused by the agent within a second.
 */
import { afterAll, describe, expect, it } from "vitest";
import { waitFor } from "@moat/testkit";
import { api, cleanup, createAgent, getAgent, startAgent, startControlPlane } from "./support.js";

afterAll(cleanup);

const POLICY = {
  apiVersion: "moat.dev/v1",
  kind: "Policy",
  metadata: { name: "eng-read" },
  spec: {
    subjects: { groups: ["engineers"] },
    resources: { names: ["orders-db"] },
    rules: [{ name: "read", effect: "allow", actions: ["connect", "db:read"] }],
  },
};

describe("access tokens at the agent", () => {
  it("verifies control-plane tokens locally and refuses revoked tokens and disabled users within a second", async () => {
    const cp = await startControlPlane();
    const { id, token: enrolment } = await createAgent(cp, "edge-tokens");
    const agent = await startAgent({
      token: enrolment,
      decisionEndpoint: true,
      yaml: "resources:\n  - { name: orders-db, type: postgres, listen: '127.0.0.1:6432' }\n",
    });
    expect((await api(cp, "PUT", "/api/v1/policies/eng-read", POLICY)).status).toBe(201);
    const user = await api<{ id: string }>(cp, "POST", "/api/v1/users", {
      email: "carol@example.com",
      role: "member",
      groups: ["engineers"],
      password: "correct horse battery staple",
    });
    expect(user.status).toBe(201);
    await waitFor(async () => (await getAgent(cp, id)).bundleVersion !== "0", 15_000);

    // A login returns a token for the REST API; what users present to agents is minted from it.
    const login = async () => {
      const res = await fetch(`${cp.url}/api/v1/auth/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ email: "carol@example.com", password: "correct horse battery staple" }),
      });
      const session = (await res.json()) as { accessToken: string };
      const minted = await fetch(`${cp.url}/api/v1/tokens`, {
        method: "POST",
        headers: { authorization: `Bearer ${session.accessToken}` },
      });
      return {
        ...((await minted.json()) as { accessToken: string; tokenId: string }),
        sessionToken: session.accessToken,
      };
    };
    const decide = async (token: string, action = "db:read") =>
      (await (
        await fetch(`http://127.0.0.1:${agent.adminPort}/v1/decide`, {
          method: "POST",
          body: JSON.stringify({ token, resource: "orders-db", action }),
        })
      ).json()) as {
        effect: string;
        message: string;
        user?: string;
      };

    const first = await login();
    await waitFor(async () => (await decide(first.accessToken)).effect === "allow", 10_000);
    expect(await decide(first.accessToken)).toMatchObject({ effect: "allow", user: "carol@example.com" });
    expect((await decide(first.accessToken, "db:write")).effect).toBe("deny");
    // The REST session token is refused by the agent (another audience).
    expect(await decide(first.sessionToken)).toMatchObject({ effect: "deny", message: expect.stringContaining("aud") });
    // Change one character well inside the signature (its last characters carry padding bits).
    const at = first.accessToken.length - 20;
    const tampered =
      first.accessToken.slice(0, at) + (first.accessToken[at] === "A" ? "B" : "A") + first.accessToken.slice(at + 1);
    expect(await decide(tampered)).toMatchObject({
      effect: "deny",
      message: "authentication failed: the access token is invalid",
    });

    let started = Date.now();
    expect((await api(cp, "DELETE", `/api/v1/tokens/${first.tokenId}`)).status).toBe(204);
    await waitFor(async () => (await decide(first.accessToken)).message.includes("revoked"), 5_000, 10);
    const revokedAfterMs = Date.now() - started;

    const second = await login();
    await waitFor(async () => (await decide(second.accessToken)).effect === "allow", 5_000);
    started = Date.now();
    expect((await api(cp, "PATCH", `/api/v1/users/${user.body.id}`, { disabled: true })).status).toBe(200);
    await waitFor(async () => (await decide(second.accessToken)).effect === "deny", 5_000, 10);
    const disabledAfterMs = Date.now() - started;

    console.log(`revocation reached the agent in ${revokedAfterMs} ms; disabling in ${disabledAfterMs} ms`);
    expect(revokedAfterMs).toBeLessThan(1_000);
    expect(disabledAfterMs).toBeLessThan(1_000);
  });
});
