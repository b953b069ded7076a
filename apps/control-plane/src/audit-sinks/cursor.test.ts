import { describe, expect, it } from "vitest";
import { resolveAuditSinks, AuditSinksSchema } from "./config.js";
import { advance, decodeCursor, encodeCursor, selectDeliverable, type Cursor } from "./cursor.js";
import { subjectFor } from "./nats.js";
import { deliveryId } from "./sink.js";
import { encodeBatch, signWebhookBody, verifyWebhookSignature } from "./webhook.js";
import { validateConfig } from "@moat/common";

const row = (agentId: string, seq: number) => ({ agentId, seq: BigInt(seq) });

describe("sink cursor", () => {
  it("delivers only each source's next sequence numbers, in the given order", () => {
    const cursor: Cursor = new Map([["a", 2n]]);
    const rows = [row("b", 1), row("a", 4), row("a", 3), row("b", 2), row("a", 5), row("b", 4), row("c", 2)];
    // a: 3 is next (4 came first and is held back, so 5 is too); b: 1, 2 then a hole at 3; c: 1 missing.
    expect(selectDeliverable(rows, cursor)).toEqual([row("b", 1), row("a", 3), row("b", 2)]);
  });

  it("never passes over an event stored later with a smaller key", () => {
    // Agent a's seq 2 commits after seq 3 and 4 (two transactions finishing out of order).
    let cursor: Cursor = new Map();
    const first = selectDeliverable([row("a", 1), row("a", 3), row("a", 4)], cursor);
    expect(first).toEqual([row("a", 1)]);
    cursor = advance(cursor, first);
    expect(selectDeliverable([row("a", 3), row("a", 4)], cursor)).toEqual([]);
    const late = selectDeliverable([row("a", 3), row("a", 4), row("a", 2)], cursor);
    expect(late).toEqual([row("a", 2)]);
    cursor = advance(cursor, late);
    expect(selectDeliverable([row("a", 3), row("a", 4)], cursor)).toEqual([row("a", 3), row("a", 4)]);
  });

  it("round-trips through its stored form and refuses anything else", () => {
    const cursor: Cursor = new Map([
      ["control-plane", 12n],
      ["agent1", 9007199254740993n],
    ]);
    expect(decodeCursor(encodeCursor(cursor))).toEqual(cursor);
    expect(() => decodeCursor('{"v":2,"sources":{}}')).toThrow();
    expect(() => decodeCursor('{"v":1,"sources":{"a":"-1"}}')).toThrow();
    expect(advance(cursor, [row("agent1", 5), row("x", 1)]).get("agent1")).toBe(9007199254740993n);
  });

  it("names a delivery by its events", () => {
    expect(deliveryId([{ id: "A" }, { id: "B" }])).toBe(deliveryId([{ id: "A" }, { id: "B" }]));
    expect(deliveryId([{ id: "A" }, { id: "B" }])).not.toBe(deliveryId([{ id: "A" }]));
  });
});

describe("webhook signature and body", () => {
  it("signs t.body with HMAC-SHA256 and verifies within the tolerance only", () => {
    const body = '[{"id":"x"}]';
    const header = signWebhookBody("k3y", 1_700_000_000, body);
    expect(header).toMatch(/^t=1700000000,v1=[0-9a-f]{64}$/);
    expect(verifyWebhookSignature(header, body, "k3y", 1_700_000_100)).toBe(true);
    expect(verifyWebhookSignature(header, body, "k3y", 1_700_000_400)).toBe(false); // replayed too late
    expect(verifyWebhookSignature(header, body + " ", "k3y", 1_700_000_000)).toBe(false);
    expect(verifyWebhookSignature(header, body, "other", 1_700_000_000)).toBe(false);
    expect(verifyWebhookSignature("t=1700000000,v1=zz", body, "k3y", 1_700_000_000)).toBe(false);
  });

  it("cuts a batch to the body limit but always sends one event", () => {
    const events = Array.from({ length: 10 }, (_, i) => ({ id: String(i), pad: "x".repeat(100) }));
    const { body, count } = encodeBatch(events as never, 500);
    expect(count).toBe(4);
    expect(body.length).toBeLessThanOrEqual(500);
    expect(JSON.parse(body.toString())).toHaveLength(4);
    expect(encodeBatch(events as never, 10).count).toBe(1);
  });
});

describe("NATS subjects", () => {
  it("maps an event type to a subject under the prefix", () => {
    expect(subjectFor("moat.audit", "db.query")).toBe("moat.audit.db.query");
    expect(subjectFor("moat.audit", "we ird.>..*")).toBe("moat.audit.we_ird._._._");
  });
});

describe("sink configuration", () => {
  const resolve = (sinks: unknown, env: NodeJS.ProcessEnv = {}) =>
    resolveAuditSinks(validateConfig(AuditSinksSchema, sinks, "test"), env, (p) => `/abs/${p}`);

  it("reads env secrets and applies defaults", () => {
    const { sinks, problems } = resolve(
      {
        webhooks: [
          {
            name: "siem",
            url: "https://siem.example/in?token=x",
            secretEnv: "HOOK_KEY",
            headers: { "X-Team": "sec" },
            headersEnv: { Authorization: "SIEM_TOKEN" },
          },
        ],
        nats: { servers: ["nats://127.0.0.1:4222"], user: "moat", passwordEnv: "NATS_PW" },
      },
      { HOOK_KEY: "s3cret", NATS_PW: "pw", SIEM_TOKEN: "Splunk abc" },
    );
    expect(problems).toEqual([]);
    expect(sinks.webhooks[0]).toMatchObject({
      secret: "s3cret",
      batchSize: 100,
      timeoutMs: 10_000,
      startFrom: "earliest",
    });
    expect(sinks.webhooks[0]?.headers).toEqual({ "X-Team": "sec", Authorization: "Splunk abc" });
    expect(sinks.webhooks[0]).not.toHaveProperty("secretEnv");
    expect(sinks.webhooks[0]).not.toHaveProperty("headersEnv");
    expect(sinks.nats).toMatchObject({
      stream: "MOAT_AUDIT",
      subjectPrefix: "moat.audit",
      password: "pw",
      maxInFlight: 1,
    });
    expect(sinks.pollMs).toBe(500);
  });

  it("lists every problem", () => {
    const { problems } = resolve({
      webhooks: [
        { name: "a", url: "ftp://x.example/", secretEnv: "MISSING" },
        { name: "a", url: "https://u:p@x.example/", secretEnv: "K", secretFile: "k", headers: { "Moat-Thing": "1" } },
        { name: "b", url: "http://x.example/", caFile: "ca.pem" },
      ],
      nats: { servers: ["nats://u:p@x:4222"], tokenEnv: "T", credsFile: "c.creds", user: "u" },
    });
    const text = problems.join("\n");
    for (const expected of [
      "webhooks.0.url: only http:// and https://",
      "webhooks.0.secretEnv: the environment variable MISSING is not set",
      "webhooks.1.name: another webhook is named a",
      "webhooks.1.url: put credentials in headers",
      "webhooks.1: set exactly one of secretEnv and secretFile",
      "webhooks.1.headers.Moat-Thing",
      "webhooks.2: set exactly one",
      "webhooks.2.caFile: only meaningful for an https:// URL",
      "nats: set at most one",
      "nats: user and passwordEnv go together",
      "nats.credsFile: /abs/c.creds does not exist",
      "nats.servers.0: put credentials in",
    ])
      expect(text).toContain(expected);
  });
});
