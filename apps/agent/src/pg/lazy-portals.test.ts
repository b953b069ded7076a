/**
 * Portals whose statement is a FETCH or EXECUTE, through the agent to a real PostgreSQL. The server
 * describes such a portal by looking the cursor or prepared statement up by name when asked, but
 * runs it at its first Execute (or SQL FETCH of it) on whatever holds the name then, and keeps the
 * rows: each test changes what a name holds between those moments (reviews 22-24 found each one
 * returning a masked column in clear, or crashing the server), and checks that the agent refuses
 * rather than mask by the wrong columns. Its own server: a regression that lets a crash through
 * takes only this file's tests down.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { serialize } from "@moat/pg-wire";
import { startPostgres, type TestPostgres } from "@moat/testkit";
import { readPolicy } from "../test-support/bundles.js";
import { startHarness, type Harness } from "../test-support/pg.js";
import {
  errors,
  firstValues,
  maskedAgents,
  openRaw as open,
  pipeline,
  queryEvents,
  types,
  type Msg,
  type Raw,
} from "../test-support/raw-client.js";

const STALE =
  "was bound before a cursor or prepared statement it reads may have changed (closed, defined again, or a statement run since); bind it again";

let server: TestPostgres;
/** Domains whose CHECK swaps cursor c (closes it, reopens it on users' emails) or closes it. */
let swapperOid = 0;
let closerOid = 0;

beforeAll(async () => {
  server = await startPostgres();
  await server.createDatabase("app");
  await server.sql(
    [
      "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10)",
      "CREATE TABLE inbox (v text); INSERT INTO inbox VALUES ('hello')",
      "CREATE TABLE users (email text); INSERT INTO users VALUES ('user1@example.com'), ('user2@example.com'), ('user3@example.com')",
      "CREATE SCHEMA hr; GRANT USAGE ON SCHEMA hr TO PUBLIC",
      "CREATE TABLE hr.people (name text); INSERT INTO hr.people VALUES ('Secret Person')",
      "CREATE TABLE public.people (name text); INSERT INTO public.people VALUES ('public person')",
      "CREATE FUNCTION open_inbox(r refcursor) RETURNS refcursor LANGUAGE plpgsql AS $$ BEGIN OPEN r FOR SELECT v AS n FROM inbox; RETURN r; END $$",
      "CREATE FUNCTION open_users(r refcursor) RETURNS refcursor LANGUAGE plpgsql AS $$ BEGIN OPEN r FOR SELECT email AS n FROM users; RETURN r; END $$",
      "CREATE FUNCTION boom(i int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN IF i > 3 THEN RAISE EXCEPTION 'the fourth row failed' USING ERRCODE = '34000'; END IF; RETURN i; END $$",
      "CREATE FUNCTION swap_c() RETURNS bool LANGUAGE plpgsql AS $$ DECLARE r refcursor := 'c'; BEGIN CLOSE r; OPEN r FOR SELECT email AS n FROM users; RETURN true; END $$",
      "CREATE DOMAIN swapper AS int CHECK (swap_c())",
      "CREATE FUNCTION close_c() RETURNS bool LANGUAGE plpgsql AS $$ DECLARE r refcursor := 'c'; BEGIN CLOSE r; RETURN true; END $$",
      "CREATE DOMAIN closer AS int CHECK (close_c())",
      // A COPY target that keeps the server busy (1.5 s a row).
      "CREATE TABLE slowbox (v text)",
      "CREATE FUNCTION slow_trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1.5); RETURN NEW; END $$",
      "CREATE TRIGGER slow BEFORE INSERT ON slowbox FOR EACH ROW EXECUTE FUNCTION slow_trg()",
      // A cursor and a prepared statement made by functions, of computed columns (no table to mask by).
      "CREATE FUNCTION open_lower(r refcursor) RETURNS refcursor LANGUAGE plpgsql AS $$ BEGIN OPEN r FOR SELECT lower(email) AS n FROM users; RETURN r; END $$",
      "CREATE FUNCTION prep_lower() RETURNS int LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'PREPARE s AS SELECT lower(email) AS n FROM users'; RETURN 1; END $$",
    ].join("; "),
    "app",
  );
  swapperOid = Number((await server.sql("SELECT 'swapper'::regtype::oid", "app")).trim());
  closerOid = Number((await server.sql("SELECT 'closer'::regtype::oid", "app")).trim());
}, 120_000);

afterAll(async () => {
  await server?.stop();
});

const { startMasked, withMasked } = maskedAgents(() => server);

const leaked = (ms: Msg[]) => ms.some((m) => m.body.toString().includes("@example.com"));
const stale = (ms: Msg[], portal = "P") => {
  expect(errors(ms)[0]).toMatchObject({ code: "42501", message: `access denied: portal "${portal}" ${STALE}` });
  expect(leaked(ms)).toBe(false);
};

/**
 * A cursor and a prepared statement of users' emails, each with the statement reading it through a
 * portal and the swap that gives the name inbox's plain values instead.
 */
const EMAIL_THEN_INBOX = [
  [
    "BEGIN; DECLARE c CURSOR FOR SELECT email AS n FROM users",
    "FETCH ALL FROM c",
    "CLOSE c; DECLARE c CURSOR FOR SELECT v AS n FROM inbox",
  ],
  [
    "BEGIN; PREPARE s AS SELECT email AS n FROM users",
    "EXECUTE s",
    "DEALLOCATE s; PREPARE s AS SELECT v AS n FROM inbox",
  ],
] as const;

describe("portals of FETCH and EXECUTE", () => {
  it("refuses an Execute of a FETCH portal whose cursor was closed or replaced since its Bind (review 22)", async () => {
    await withMasked([], async (c) => {
      await c.exchange(serialize.query("BEGIN; DECLARE c CURSOR FOR SELECT 'plain' AS n"));
      const described = await c.exchange(
        serialize.parse({ name: "f", text: "FETCH ALL FROM c" }),
        serialize.bind({ portal: "P", statement: "f" }),
        serialize.describe({ type: "P", name: "P" }),
        serialize.sync(),
      );
      expect(types(described)).toBe("12TZ");
      // The cursor closed through the protocol, the name bound to a query of the masked column.
      const swapped = await c.exchange(
        serialize.close({ type: "P", name: "c" }),
        serialize.parse({ name: "e", text: "SELECT email FROM users" }),
        serialize.bind({ portal: "c", statement: "e" }),
        serialize.sync(),
      );
      expect(types(swapped)).toBe("312Z");
      const ms = await c.exchange(serialize.execute({ portal: "P" }), serialize.sync());
      expect(types(ms)).toBe("EZ");
      expect(errors(ms)[0]).toMatchObject({ code: "42501", message: `access denied: portal "P" ${STALE}` });
      expect(JSON.stringify(ms.map((m) => m.body.toString()))).not.toContain("user1@example.com");
    });
  });

  // PostgreSQL describes a FETCH or EXECUTE portal at its Bind and runs it at its first Execute, on
  // whatever holds the name then; through a FETCH portal not run yet, on what that one names.
  const swaps: { name: string; setup: Buffer[]; bind: Buffer[]; swap: Buffer[] }[] = [
    {
      name: "a FETCH portal reading a FETCH portal whose cursor was replaced",
      setup: [serialize.query("BEGIN; DECLARE c CURSOR FOR SELECT 'plain' AS n")],
      bind: [
        serialize.parse({ name: "f", text: "FETCH ALL FROM c" }),
        serialize.parse({ name: "g", text: "FETCH ALL FROM q" }),
        serialize.bind({ portal: "q", statement: "f" }),
        serialize.bind({ portal: "P", statement: "g" }),
      ],
      swap: [
        serialize.close({ type: "P", name: "c" }),
        serialize.parse({ name: "e", text: "SELECT email FROM users" }),
        serialize.bind({ portal: "c", statement: "e" }),
        serialize.sync(),
      ],
    },
    {
      name: "a portal of EXECUTE s after DEALLOCATE s and PREPARE s",
      setup: [serialize.query("BEGIN; PREPARE s AS SELECT 'plain' AS n")],
      bind: [serialize.parse({ name: "x", text: "EXECUTE s" }), serialize.bind({ portal: "P", statement: "x" })],
      swap: [serialize.query("DEALLOCATE s; PREPARE s AS SELECT email FROM users")],
    },
    {
      name: "a portal of EXECUTE s after a protocol Close and Parse of s",
      setup: [serialize.query("BEGIN")],
      bind: [
        serialize.parse({ name: "s", text: "SELECT 'plain' AS n" }),
        serialize.parse({ name: "x", text: "EXECUTE s" }),
        serialize.bind({ portal: "P", statement: "x" }),
      ],
      swap: [
        serialize.close({ type: "S", name: "s" }),
        serialize.parse({ name: "s", text: "SELECT email FROM users" }),
        serialize.sync(),
      ],
    },
  ];
  for (const { name, setup, bind, swap } of swaps)
    it(`refuses an Execute of ${name} since its Bind, and audits the refusal (review 23)`, async () => {
      await withMasked([], async (c, masked) => {
        for (const m of setup) await c.exchange(m);
        const described = await c.exchange(...bind, serialize.describe({ type: "P", name: "P" }), serialize.sync());
        expect(described.filter((m) => m.type === "E")).toEqual([]);
        expect(types(described)).toMatch(/TZ$/);
        await c.exchange(...swap);
        const ms = await c.exchange(serialize.execute({ portal: "P" }), serialize.sync());
        expect(types(ms)).toBe("EZ");
        expect(errors(ms)[0]).toMatchObject({
          code: "42501",
          message: `access denied: portal "P" ${STALE}`,
        });
        expect(JSON.stringify(ms.map((m) => m.body.toString()))).not.toContain("user1@example.com");
        c.socket.destroy();
        await new Promise((r) => setTimeout(r, 200));
        // The refusal is the portal's record: no allowed run of it follows.
        const last = queryEvents(masked).filter(({ q }) => /^(FETCH ALL FROM q|EXECUTE s)$/.test(q.text));
        expect(last.map(({ ev }) => [ev.verdict, ev.message])).toEqual([[2, errors(ms)[0]?.message]]);
      });
    });

  it("runs a chain of FETCH portals and a portal of EXECUTE s when nothing changed, masked", async () => {
    await withMasked([], async (c) => {
      await c.exchange(
        serialize.query("BEGIN; DECLARE c CURSOR FOR SELECT email FROM users; PREPARE s AS SELECT email FROM users"),
      );
      const ms = await c.exchange(
        serialize.parse({ name: "f", text: "FETCH ALL FROM c" }),
        serialize.parse({ name: "g", text: "FETCH ALL FROM q" }),
        serialize.bind({ portal: "q", statement: "f" }),
        serialize.bind({ portal: "P", statement: "g" }),
        serialize.execute({ portal: "P" }),
        serialize.parse({ name: "x", text: "EXECUTE s" }),
        serialize.bind({ portal: "X", statement: "x" }),
        serialize.execute({ portal: "X" }),
        serialize.sync(),
      );
      expect(types(ms)).toBe("1122DDDC12DDDCZ");
      expect(firstValues(ms)).toHaveLength(6);
      expect(firstValues(ms).join()).not.toContain("user1@example.com");
    });
  });

  it("refuses a Describe after a swap, once the portal ran: its columns would be the new name's, its rows the old (review 24)", async () => {
    for (const [setup, bind, swap] of EMAIL_THEN_INBOX) {
      await withMasked([], async (c) => {
        await c.exchange(serialize.query(setup));
        const first = await c.exchange(
          serialize.parse({ name: "f", text: bind }),
          serialize.bind({ portal: "P", statement: "f" }),
          serialize.describe({ type: "P", name: "P" }),
          serialize.execute({ portal: "P", rows: 1 }),
          serialize.sync(),
        );
        expect(types(first)).toBe("12TDsZ");
        expect(leaked(first)).toBe(false);
        await c.exchange(serialize.query(swap));
        stale(
          await c.exchange(
            serialize.describe({ type: "P", name: "P" }),
            serialize.execute({ portal: "P" }),
            serialize.sync(),
          ),
        );
      });
    }
  });

  it("pages a portal that ran while other statements run between its Executes, masked", async () => {
    await withMasked([], async (c) => {
      await c.exchange(serialize.query("BEGIN; DECLARE c CURSOR FOR SELECT email AS n FROM users"));
      const pages: Msg[] = [];
      pages.push(
        ...(await c.exchange(
          serialize.parse({ name: "f", text: "FETCH ALL FROM c" }),
          serialize.bind({ portal: "P", statement: "f" }),
          serialize.execute({ portal: "P", rows: 1 }),
          serialize.sync(),
        )),
      );
      for (let i = 0; i < 2; i++) {
        expect(types(await c.exchange(serialize.query("SELECT 1")))).toBe("TDCZ");
        pages.push(...(await c.exchange(serialize.execute({ portal: "P", rows: 1 }), serialize.sync())));
      }
      expect(firstValues(pages)).toHaveLength(3);
      expect(leaked(pages)).toBe(false);
    });
  });

  it("refuses a SQL FETCH of a portal that ran before its cursor or statement was swapped (review 24)", async () => {
    for (const [setup, bind, swap] of EMAIL_THEN_INBOX) {
      await withMasked([], async (c) => {
        await c.exchange(serialize.query(setup));
        await c.exchange(
          serialize.parse({ name: "f", text: bind }),
          serialize.bind({ portal: "P", statement: "f" }),
          serialize.sync(),
        );
        expect(types(await c.exchange(serialize.query('MOVE FORWARD 0 IN "P"')))).toBe("CZ");
        await c.exchange(serialize.query(swap));
        stale(await c.exchange(serialize.query('FETCH ALL FROM "P"')));
      });
    }
  });

  it("refuses the Execute of a portal whose first Execute the target skipped, after a swap (review 24)", async () => {
    await withMasked([], async (c) => {
      await c.exchange(serialize.query("BEGIN; DECLARE c CURSOR FOR SELECT v AS n FROM inbox"));
      await c.exchange(
        serialize.parse({ name: "f", text: "FETCH ALL FROM c" }),
        serialize.bind({ portal: "P", statement: "f" }),
        serialize.describe({ type: "P", name: "P" }),
        serialize.sync(),
      );
      await c.exchange(serialize.query("SAVEPOINT s1"));
      const skipped = await c.exchange(
        serialize.parse({ name: "z", text: "SELECT 1/0" }),
        serialize.bind({ portal: "Z", statement: "z" }),
        serialize.execute({ portal: "Z" }),
        serialize.execute({ portal: "P" }),
        serialize.sync(),
      );
      expect(errors(skipped)[0]?.code).toBe("22012");
      await c.exchange(serialize.query("ROLLBACK TO SAVEPOINT s1"));
      await c.exchange(
        serialize.close({ type: "P", name: "c" }),
        serialize.parse({ name: "e", text: "SELECT email AS n FROM users" }),
        serialize.bind({ portal: "c", statement: "e" }),
        serialize.sync(),
      );
      stale(await c.exchange(serialize.execute({ portal: "P" }), serialize.sync()));
    });
  });

  it("refuses a portal of EXECUTE bound before a search_path change: the server plans it again (review 24)", async () => {
    const policy = readPolicy() as { spec: { rules: object[] } };
    policy.spec.rules.push({
      name: "no-hr",
      effect: "deny",
      actions: ["db:*"],
      tables: ["hr.*"],
      message: "hr is off limits",
    });
    const harness = await startHarness({ pg: server, policies: [policy] });
    try {
      const c = await open(harness);
      await c.exchange(serialize.query("BEGIN; PREPARE s AS SELECT name FROM people"));
      await c.exchange(
        serialize.parse({ name: "x", text: "EXECUTE s" }),
        serialize.bind({ portal: "P", statement: "x" }),
        serialize.sync(),
      );
      await c.exchange(serialize.query("SET search_path = hr, public"));
      const ms = await c.exchange(serialize.execute({ portal: "P" }), serialize.sync());
      stale(ms);
      expect(JSON.stringify(ms.map((m) => m.body.toString()))).not.toContain("Secret Person");
      c.socket.destroy();
    } finally {
      await harness.close();
    }
  });

  it("refuses to describe or FETCH a portal whose cursor was closed: PostgreSQL 15 crashes doing it (review 24)", async () => {
    const masked = await startMasked();
    const bystander = await open(masked);
    try {
      for (const probe of [
        [serialize.describe({ type: "P", name: "P" }), serialize.sync()],
        [serialize.query('FETCH ALL FROM "P"')],
        [serialize.parse({ name: "g", text: 'FETCH ALL FROM "P"' }), serialize.sync()],
      ]) {
        const c = await open(masked);
        await c.exchange(serialize.query("BEGIN; DECLARE c CURSOR FOR SELECT 'plain' AS n"));
        await c.exchange(
          serialize.parse({ name: "f", text: "FETCH ALL FROM c" }),
          serialize.bind({ portal: "P", statement: "f" }),
          serialize.sync(),
        );
        await c.exchange(serialize.query("CLOSE c"));
        stale(await c.exchange(...probe));
        expect(types(await c.exchange(serialize.query("ROLLBACK")))).toBe("CZ");
        c.socket.destroy();
      }
      // The server is still up: another session's query runs.
      expect(types(await bystander.exchange(serialize.query("SELECT 1")))).toBe("TDCZ");
    } finally {
      bystander.socket.destroy();
      await masked.close();
    }
  });

  it("runs a FETCH of a cursor a function opened (pgjdbc's refcursor), and refuses it once another function ran (review 24)", async () => {
    await withMasked(["db:function"], async (c) => {
      await c.exchange(serialize.query("BEGIN; SELECT open_users('r')"));
      const read = await c.exchange(
        serialize.parse({ name: "", text: 'FETCH ALL IN "r"' }),
        serialize.bind({}),
        serialize.describe({ type: "P", name: "" }),
        serialize.execute({}),
        serialize.sync(),
      );
      expect(types(read)).toBe("12TDDDCZ");
      expect(leaked(read)).toBe(false);
      // A portal on a cursor the agent never saw declared, the cursor swapped by functions.
      await c.exchange(serialize.query("SELECT open_inbox('c')"));
      await c.exchange(
        serialize.parse({ name: "f", text: "FETCH ALL FROM c" }),
        serialize.bind({ portal: "P", statement: "f" }),
        serialize.describe({ type: "P", name: "P" }),
        serialize.close({ type: "P", name: "c" }),
        serialize.sync(),
      );
      await c.exchange(serialize.query("SELECT open_users('c')"));
      stale(await c.exchange(serialize.execute({ portal: "P" }), serialize.sync()));
    });
  });
});

describe("what PostgreSQL looks up when describing (review 25: crashes and a swap the agent did not see)", () => {
  it("refuses a Describe of a prepared FETCH once anything ran since its Parse, and allows it right after", async () => {
    const harness = await startHarness({ pg: server, policies: [readPolicy()] });
    const bystander = await open(harness);
    try {
      const c = await open(harness);
      await c.exchange(serialize.query("BEGIN; DECLARE c CURSOR FOR SELECT 1 AS n"));
      const fresh = await c.exchange(
        serialize.parse({ name: "f", text: "FETCH ALL FROM c" }),
        serialize.describe({ type: "S", name: "f" }),
        serialize.sync(),
      );
      expect(types(fresh)).toBe("1tTZ");
      // The statement outlives the transaction; its cursor does not.
      await c.exchange(serialize.query("COMMIT"));
      const ms = await c.exchange(serialize.describe({ type: "S", name: "f" }), serialize.sync());
      expect(errors(ms)[0]).toMatchObject({ code: "42501", message: expect.stringContaining("right after its Parse") });
      c.socket.destroy();
      expect(types(await bystander.exchange(serialize.query("SELECT 1")))).toBe("TDCZ");
    } finally {
      bystander.socket.destroy();
      await harness.close();
    }
  });

  it("refuses a Describe of a prepared FETCH of a function's cursor after the Sync that ended its implicit transaction", async () => {
    const harness = await startHarness({ pg: server, policies: [readPolicy(["db:function"])] });
    const bystander = await open(harness);
    try {
      const c = await open(harness);
      const ms = await c.exchange(
        serialize.parse({ name: "o", text: "SELECT open_inbox('r')" }),
        serialize.bind({ statement: "o" }),
        serialize.execute({}),
        serialize.parse({ name: "f", text: 'FETCH ALL IN "r"' }),
        serialize.sync(),
      );
      expect(types(ms)).toBe("12DC1Z");
      const described = await c.exchange(serialize.describe({ type: "S", name: "f" }), serialize.sync());
      expect(errors(described)[0]?.code).toBe("42501");
      c.socket.destroy();
      expect(types(await bystander.exchange(serialize.query("SELECT 1")))).toBe("TDCZ");
    } finally {
      bystander.socket.destroy();
      await harness.close();
    }
  });

  it("refuses a portal on a function's cursor once a protocol Close of that cursor was sent, the agent's own Describe too", async () => {
    const masked = await startMasked(["db:function"]);
    const bystander = await open(masked);
    try {
      for (const probe of [
        [serialize.describe({ type: "P", name: "" }), serialize.sync()],
        [serialize.execute({}), serialize.sync()],
      ]) {
        const c = await open(masked);
        await c.exchange(serialize.query("BEGIN; SELECT open_inbox('r')"));
        await c.exchange(
          serialize.parse({ name: "", text: 'FETCH ALL IN "r"' }),
          serialize.bind({}),
          serialize.close({ type: "P", name: "r" }),
          serialize.sync(),
        );
        stale(await c.exchange(...probe), "");
        c.socket.destroy();
      }
      expect(types(await bystander.exchange(serialize.query("SELECT 1")))).toBe("TDCZ");
    } finally {
      bystander.socket.destroy();
      await masked.close();
    }
  });

  it("counts a Bind as a run: its parameters' domain CHECK can swap or close the cursor another portal reads", async () => {
    for (const [domain, probe] of [
      [() => swapperOid, serialize.execute({ portal: "P" })],
      [() => closerOid, serialize.describe({ type: "P", name: "P" })],
    ] as const) {
      await withMasked([], async (c) => {
        await c.exchange(
          serialize.query("BEGIN; DECLARE c CURSOR FOR SELECT v AS n FROM inbox; DECLARE d CURSOR FOR SELECT 1"),
        );
        await c.exchange(
          serialize.parse({ name: "f", text: "FETCH ALL FROM c" }),
          serialize.bind({ portal: "P", statement: "f" }),
          serialize.describe({ type: "P", name: "P" }),
          serialize.sync(),
        );
        const ms = await c.exchange(
          serialize.parse({ name: "g", text: "FETCH ALL FROM d", types: [domain()] }),
          serialize.bind({ portal: "Q", statement: "g", values: ["1"] }),
          probe,
          serialize.sync(),
        );
        expect(types(ms)).toBe("12EZ");
        stale(ms);
      });
    }
  });

  it("lets a portal name closed and bound again to a SELECT be described and read", async () => {
    await withMasked([], async (c) => {
      await c.exchange(serialize.query("BEGIN; DECLARE c CURSOR FOR SELECT v AS n FROM inbox"));
      await c.exchange(
        serialize.parse({ name: "f", text: "FETCH ALL FROM c" }),
        serialize.bind({ portal: "P", statement: "f" }),
        serialize.sync(),
      );
      const ms = await c.exchange(
        serialize.close({ type: "P", name: "P" }),
        serialize.parse({ name: "s", text: "SELECT email FROM users" }),
        serialize.bind({ portal: "P", statement: "s" }),
        serialize.describe({ type: "P", name: "P" }),
        serialize.execute({ portal: "P" }),
        serialize.sync(),
      );
      expect(types(ms)).toBe("312TDDDCZ");
      expect(leaked(ms)).toBe(false);
      expect(types(await c.exchange(serialize.query('FETCH ALL FROM "P"')))).toBe("TCZ");
    });
  });
});

describe("ends of transactions and refusals, as runs (review 26)", () => {
  /** Sends each write, waiting for a ReadyForQuery after each; then checks the server is still up. */
  async function crashProbe(harness: Harness, ...writes: Buffer[][]): Promise<Msg[]> {
    const bystander = await open(harness);
    const c = await open(harness);
    let last: Msg[] = [];
    try {
      // Each write's every ReadyForQuery (one per Query, FunctionCall and Sync) awaited: a late one
      // must not end the next exchange early (seen flaking under load).
      for (const w of writes)
        last = await pipeline(
          c,
          Math.max(1, w.filter((m) => [0x51, 0x53, 0x46].includes(m[0] as number)).length),
          ...w,
        );
      expect(types(await bystander.exchange(serialize.query("SELECT 1")))).toBe("TDCZ");
    } finally {
      c.socket.destroy();
      bystander.socket.destroy();
    }
    return last;
  }
  const portalAndFetch = [
    serialize.parse({ name: "", text: "SELECT v AS n FROM inbox" }),
    serialize.bind({ portal: "c" }),
    serialize.parse({ name: "f", text: "FETCH ALL FROM c" }),
  ];
  const describeF = [serialize.describe({ type: "S", name: "f" }), serialize.sync()];

  it("keeps a named statement a refused Parse of its name leaves on the server", async () => {
    const harness = await startHarness({ pg: server, policies: [readPolicy()] });
    try {
      const ms = await crashProbe(
        harness,
        [serialize.query("BEGIN; DECLARE c CURSOR FOR SELECT v AS n FROM inbox")],
        [serialize.parse({ name: "f", text: "FETCH ALL FROM c" }), serialize.sync()],
        [serialize.parse({ name: "f", text: "DELETE FROM t" }), serialize.sync()],
        [serialize.query("ROLLBACK")],
        describeF,
      );
      expect(errors(ms)[0]?.code).toBe("42501");
    } finally {
      await harness.close();
    }
  });

  it("masks EXECUTE of a statement whose refused re-Parse and failed PREPARE the server ignored", async () => {
    await withMasked([], async (c) => {
      await c.exchange(serialize.parse({ name: "s", text: "SELECT email || '' AS n FROM users" }), serialize.sync());
      await c.exchange(serialize.parse({ name: "s", text: "SELEC garbage" }), serialize.sync());
      expect(errors(await c.exchange(serialize.query("PREPARE s AS SELECT 'plain'::text AS n")))[0]?.code).toBe(
        "42P05",
      );
      const ms = await c.exchange(serialize.query("EXECUTE s"));
      expect(firstValues(ms)).toHaveLength(3);
      expect(leaked(ms)).toBe(false);
    });
  });

  it("counts a refused Query and a FunctionCall: each ends the implicit transaction holding the cursor", async () => {
    const harness = await startHarness({ pg: server, policies: [readPolicy()] });
    try {
      const functionCall = Buffer.from([0x46, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
      functionCall.writeInt32BE(1, 5);
      for (const ending of [serialize.query("DELETE FROM t"), serialize.query("SELEC 1"), functionCall]) {
        const ms = await crashProbe(harness, [...portalAndFetch, ending, ...describeF]);
        expect(errors(ms).map((e) => e.code)).toContain("42501");
      }
    } finally {
      await harness.close();
    }
  });

  it("counts a Sync unless surely inside a block: a COMMIT pipelined or executed in the same cycle", async () => {
    const harness = await startHarness({ pg: server, policies: [readPolicy()] });
    try {
      let ms = await crashProbe(
        harness,
        [serialize.query("BEGIN")],
        [serialize.query("COMMIT"), ...portalAndFetch, serialize.sync()],
        describeF,
      );
      expect(errors(ms)[0]?.code).toBe("42501");
      ms = await crashProbe(
        harness,
        [serialize.query("BEGIN")],
        [
          serialize.parse({ name: "k", text: "COMMIT" }),
          serialize.bind({ statement: "k" }),
          serialize.execute({}),
          ...portalAndFetch,
          serialize.sync(),
        ],
        describeF,
      );
      expect(errors(ms)[0]?.code).toBe("42501");
    } finally {
      await harness.close();
    }
  });

  it("describes a prepared FETCH later in the same transaction block (psql's \\gdesc)", async () => {
    const harness = await startHarness({ pg: server, policies: [readPolicy()] });
    try {
      const c = await open(harness);
      await c.exchange(serialize.query("BEGIN; DECLARE c CURSOR FOR SELECT 1 AS n"));
      await c.exchange(serialize.parse({ name: "f", text: "FETCH ALL FROM c" }), serialize.sync());
      expect(types(await c.exchange(...describeF))).toBe("tTZ");
      c.socket.destroy();
    } finally {
      await harness.close();
    }
  });
});

describe("a Parse of a name the server still holds (reviews 27-30)", () => {
  const emails = serialize.parse({ name: "s", text: "SELECT email || '' AS n FROM users" });
  const readS = [
    serialize.bind({ statement: "s" }),
    serialize.describe({ type: "P", name: "" }),
    serialize.execute({}),
    serialize.sync(),
  ];

  /** A session through a masked harness (and `extra` actions) in which `s` holds the emails statement. */
  async function withEmailsPrepared(extra: string[], body: (c: Raw, masked: Harness) => Promise<void>): Promise<void> {
    await withMasked(extra, async (c, masked) => {
      await c.exchange(emails, serialize.sync());
      await body(c, masked);
    });
  }

  it("masks a Bind pipelined behind it as either statement until the server answers", async () => {
    await withEmailsPrepared([], async (c) => {
      const ms = await pipeline(
        c,
        2,
        serialize.parse({ name: "s", text: "SELECT 'plain'::text AS n" }),
        serialize.sync(),
        ...readS,
      );
      expect(errors(ms)[0]?.code).toBe("42P05");
      expect(firstValues(ms)).toHaveLength(3);
      expect(leaked(ms)).toBe(false);
    });
  });

  it("audits a Bind pipelined behind it with the text of the statement the server ran", async () => {
    await withEmailsPrepared([], async (c, masked) => {
      const plain = "SELECT 'plain'::text AS n";
      await pipeline(c, 2, serialize.parse({ name: "s", text: plain }), serialize.sync(), ...readS);
      c.socket.destroy();
      await new Promise((r) => setTimeout(r, 300));
      const runs = queryEvents(masked).filter(({ q }) => Number(q.rows) > 0);
      expect(runs.map(({ q }) => q.text)).toEqual(["SELECT email || '' AS n FROM users"]);
    });
  });

  it("binds, in the Parse's own Sync cycle, the statement it made: the Bind runs only if the Parse did", async () => {
    await withMasked([], async (c) => {
      await c.exchange(serialize.parse({ name: "s", text: "SET search_path TO public" }), serialize.sync());
      // A statement cache evicting s (pgx): Close and Parse again, bound in the same cycle.
      const again = [serialize.close({ type: "S", name: "s" }), serialize.parse({ name: "s", text: "SELECT 1 AS n" })];
      const ms = await c.exchange(...again, ...readS);
      expect(errors(ms)).toEqual([]);
      expect(firstValues(ms)).toEqual(["1"]);
      // Without the Close the Parse fails, and so the Bind behind it is skipped (no rows of either).
      await c.exchange(emails, serialize.sync());
      const skipped = await c.exchange(serialize.parse({ name: "s", text: "SELECT 'plain'::text AS n" }), ...readS);
      expect(errors(skipped).map((e) => e.code)).toEqual(["42P05"]);
      expect(firstValues(skipped)).toEqual([]);
    });
  });

  it("forgets the name after a Close of it and a Parse the server refused", async () => {
    await withEmailsPrepared([], async (c) => {
      const failed = await c.exchange(
        serialize.close({ type: "S", name: "s" }),
        serialize.parse({ name: "s", text: "SELECT n FROM nosuch" }),
        serialize.sync(),
      );
      expect(errors(failed).map((e) => e.code)).toEqual(["42P01"]);
      // The server holds nothing under s: a new Parse of it is that statement alone, not masked.
      const ms = await c.exchange(serialize.parse({ name: "s", text: "SELECT 'plain'::text AS n" }), ...readS);
      expect(firstValues(ms)).toEqual(["plain"]);
    });
  });

  it("frees the name for the first Parse after a Close only: a second one fails, keeping the first (review 29)", async () => {
    await withMasked([], async (c) => {
      await c.exchange(serialize.parse({ name: "s", text: "SELECT 'old'::text AS n" }), serialize.sync());
      const first = await c.exchange(
        serialize.close({ type: "S", name: "s" }),
        emails,
        serialize.parse({ name: "s", text: "SELECT 'plain'::text AS n" }),
        serialize.sync(),
      );
      expect(errors(first).map((e) => e.code)).toEqual(["42P05"]);
      // The server holds the emails statement under s: bound, it is masked (and not refused).
      const bound = await c.exchange(...readS);
      expect(errors(bound)).toEqual([]);
      expect(firstValues(bound)).toEqual(["****", "****", "****"]);
      const ms = await pipeline(
        c,
        2,
        serialize.parse({ name: "s", text: "SELECT 'plain2'::text AS n" }),
        serialize.sync(),
        ...readS,
      );
      expect(firstValues(ms)).toHaveLength(3);
      expect(leaked(ms)).toBe(false);
    });
  });

  it("audits a Bind behind two failed Parses with the text of the statement the server kept (review 29)", async () => {
    await withEmailsPrepared([], async (c, masked) => {
      await pipeline(
        c,
        2,
        serialize.parse({ name: "s", text: "SELECT 'plainA'::text AS n" }),
        serialize.parse({ name: "s", text: "SELECT 'plainB'::text AS n" }),
        serialize.sync(),
        ...readS,
      );
      c.socket.destroy();
      await new Promise((r) => setTimeout(r, 300));
      const runs = queryEvents(masked).filter(({ q }) => Number(q.rows) > 0);
      expect(runs.map(({ q }) => q.text)).toEqual(["SELECT email || '' AS n FROM users"]);
    });
  });

  it("refuses EXECUTE of a name that may still hold a statement changing the session (review 29)", async () => {
    const policy = readPolicy() as { spec: { rules: object[] } };
    policy.spec.rules.push({ name: "no-hr", effect: "deny", actions: ["db:*"], tables: ["hr.*"] });
    const harness = await startHarness({ pg: server, policies: [policy] });
    try {
      const c = await open(harness);
      await c.exchange(serialize.parse({ name: "s", text: "SET search_path TO hr, public" }), serialize.sync());
      const ms = await pipeline(
        c,
        3,
        serialize.parse({ name: "s", text: "SELECT 1 AS n" }),
        serialize.sync(),
        serialize.query("EXECUTE s"),
        serialize.query("SELECT name FROM people"),
      );
      expect(errors(ms).map((e) => e.code)).toEqual(["42P05", "42501"]);
      expect(firstValues(ms)).toEqual(["public person"]);
      c.socket.destroy();
    } finally {
      await harness.close();
    }
  });

  it("masks a Bind behind a Sync the server answered as either statement, a Sync it ignored in COPY before it (review 30)", async () => {
    await withEmailsPrepared(["db:copy-in"], async (c) => {
      const start = c.messages.length;
      // An extended COPY with a Sync behind its Execute (ignored by the server in COPY mode), the
      // data, and a Parse of s (it fails: s is held), all before the server's CopyInResponse.
      c.socket.write(
        Buffer.concat([
          serialize.parse({ name: "", text: "COPY slowbox FROM STDIN" }),
          serialize.bind({}),
          serialize.execute({}),
          serialize.sync(),
          serialize.copyData(Buffer.from("x\n")),
          serialize.copyDone(),
          serialize.parse({ name: "s", text: "SELECT 'plain'::text AS n" }),
        ]),
      );
      await c.until((m) => m.slice(start).some((x) => x.type === "G"));
      // The server is still inserting: the Parse is not answered when the Bind behind a Sync is sent.
      c.socket.write(Buffer.concat([serialize.sync(), ...readS]));
      await c.until((m) => m.slice(start).filter((x) => x.type === "Z").length >= 2, 10_000);
      const ms = c.messages.slice(start);
      expect(errors(ms).map((e) => e.code)).toEqual(["42P05"]);
      expect(firstValues(ms)).toHaveLength(3);
      expect(leaked(ms)).toBe(false);
    });
  });

  it("audits the parameters of a Bind the other statement ran as redacted as the statement they were sent for (review 30)", async () => {
    await withMasked(["db:admin"], async (c, masked) => {
      await c.exchange(serialize.parse({ name: "s", text: "SELECT $1::text AS n" }), serialize.sync());
      await pipeline(
        c,
        2,
        serialize.parse({ name: "s", text: "SELECT set_config('app.password', $1, false) AS n" }),
        serialize.sync(),
        serialize.bind({ statement: "s", values: ["hunter2"] }),
        serialize.describe({ type: "P", name: "" }),
        serialize.execute({}),
        serialize.sync(),
      );
      c.socket.destroy();
      await new Promise((r) => setTimeout(r, 300));
      const texts = queryEvents(masked).map(({ q }) => q.text);
      expect(texts).toContain("SELECT $1::text AS n -- parameters: ***");
      expect(texts.join("\n")).not.toContain("hunter2");
    });
  });

  it("keeps the first statement after two failed Parses of its name in one cycle", async () => {
    await withEmailsPrepared([], async (c) => {
      await c.exchange(
        serialize.parse({ name: "s", text: "SELECT 'plain'::text AS n" }),
        serialize.parse({ name: "s", text: "SELECT 'plain2'::text AS n" }),
        serialize.sync(),
      );
      const ms = [...(await c.exchange(...readS)), ...(await c.exchange(serialize.query("EXECUTE s")))];
      expect(firstValues(ms)).toHaveLength(6);
      expect(leaked(ms)).toBe(false);
    });
  });

  it("refuses a Describe of the prepared FETCH the server kept, its cursor gone", async () => {
    const harness = await startHarness({ pg: server, policies: [readPolicy()] });
    const bystander = await open(harness);
    try {
      const c = await open(harness);
      await c.exchange(serialize.query("BEGIN; DECLARE c CURSOR FOR SELECT v AS n FROM inbox"));
      await c.exchange(serialize.parse({ name: "f", text: "FETCH ALL FROM c" }), serialize.sync());
      await c.exchange(serialize.query("ROLLBACK"));
      const ms = await pipeline(
        c,
        2,
        serialize.parse({ name: "f", text: "SELECT 1 AS n" }),
        serialize.sync(),
        serialize.describe({ type: "S", name: "f" }),
        serialize.sync(),
      );
      expect(errors(ms).map((e) => e.code)).toEqual(["42P05", "42501"]);
      c.socket.destroy();
      expect(types(await bystander.exchange(serialize.query("SELECT 1")))).toBe("TDCZ");
    } finally {
      bystander.socket.destroy();
      await harness.close();
    }
  });
});

describe("names a function defined out of the agent's sight (review 25)", () => {
  it("reads a cursor as any column until its DECLARE has succeeded: it fails when a function's cursor holds the name", async () => {
    await withMasked(["db:function"], async (c) => {
      await c.exchange(serialize.query("BEGIN; SELECT open_lower('c')"));
      const declared = await c.exchange(serialize.query("SAVEPOINT s; DECLARE c CURSOR FOR SELECT v AS n FROM inbox"));
      expect(errors(declared).map((e) => e.code)).toEqual(["42P03"]);
      await c.exchange(serialize.query("ROLLBACK TO SAVEPOINT s"));
      const ms = await c.exchange(serialize.query("FETCH ALL FROM c"));
      expect(firstValues(ms)).toEqual(["****", "****", "****"]);
      // A DECLARE that succeeds reads as its own query at once, in the same message too.
      const own = await c.exchange(serialize.query("DECLARE d CURSOR FOR SELECT v AS n FROM inbox; FETCH ALL FROM d"));
      expect(firstValues(own)).toEqual(["hello"]);
    });
  });

  it("reads a protocol statement as any column until its Parse has succeeded, behind a Sync (review 31)", async () => {
    await withMasked(["db:function"], async (c) => {
      await c.exchange(serialize.query("SELECT prep_lower()"));
      const read = (statement: string) => [
        serialize.bind({ statement }),
        serialize.describe({ type: "P", name: "" }),
        serialize.execute({}),
        serialize.sync(),
      ];
      const inbox = (name: string) => serialize.parse({ name, text: "SELECT v AS n FROM inbox" });
      const ms = await pipeline(c, 2, inbox("s"), serialize.sync(), ...read("s"));
      expect(errors(ms).map((e) => e.code)).toEqual(["42P05"]);
      expect(firstValues(ms)).toEqual(["****", "****", "****"]);
      // A Parse that succeeds: its own statement, bound in its cycle and once answered.
      expect(firstValues(await c.exchange(inbox("t"), ...read("t")))).toEqual(["hello"]);
      expect(firstValues(await c.exchange(...read("t")))).toEqual(["hello"]);
    });
  });

  it("forgets a WITH HOLD cursor whose transaction did not commit: a function may reopen the name (review 31)", async () => {
    const masked = await startMasked(["db:function"]);
    try {
      const declare = "DECLARE c CURSOR WITH HOLD FOR SELECT v AS n FROM inbox";
      const extended = (text: string) => [serialize.parse({ text }), serialize.bind({}), serialize.execute({})];
      // Each: the round trips of a transaction that declares c WITH HOLD and does not commit.
      const endings: Buffer[][][] = [
        [[serialize.query(`BEGIN; ${declare}`)], [serialize.query("ROLLBACK")]],
        // The commit fails (the cursor's rows are computed then): COMMIT answers with an error.
        [
          [serialize.query("BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT (1/(id-5))::text AS n FROM t")],
          [serialize.query("COMMIT")],
        ],
        [[serialize.query(`${declare}; SELECT 1/0`)]],
        [[...extended(declare), ...extended("SELECT 1/0"), serialize.sync()]],
      ];
      for (const trips of endings) {
        const c = await open(masked);
        for (const messages of trips) await c.exchange(...messages);
        await c.exchange(serialize.query("BEGIN; SELECT open_lower('c')"));
        expect(firstValues(await c.exchange(serialize.query("FETCH ALL FROM c")))).toEqual(["****", "****", "****"]);
        c.socket.destroy();
      }
      // Committed, it stays what it was declared as.
      const c = await open(masked);
      await c.exchange(serialize.query(`BEGIN; ${declare}`));
      await c.exchange(serialize.query("COMMIT"));
      expect(firstValues(await c.exchange(serialize.query("FETCH ALL FROM c")))).toEqual(["hello"]);
      c.socket.destroy();
    } finally {
      await masked.close();
    }
  });

  it("forgets the cursors and portals a ROLLBACK TO closed, and only those (review 31)", async () => {
    await withMasked(["db:function"], async (c) => {
      await c.exchange(serialize.query("BEGIN; DECLARE kept CURSOR FOR SELECT v AS n FROM inbox; SAVEPOINT a"));
      await c.exchange(serialize.query("DECLARE c CURSOR FOR SELECT v AS n FROM inbox"));
      await c.exchange(
        serialize.parse({ name: "q", text: "SELECT v AS n FROM inbox" }),
        serialize.bind({ portal: "P", statement: "q" }),
        serialize.describe({ type: "P", name: "P" }),
        serialize.sync(),
      );
      expect(errors(await c.exchange(serialize.query("ROLLBACK TO SAVEPOINT a")))).toEqual([]);
      // Their names are free on the server: a function opens cursors under them.
      await c.exchange(serialize.query("SELECT open_lower('c'), open_lower('P')"));
      expect(firstValues(await c.exchange(serialize.query("FETCH ALL FROM c")))).toEqual(["****", "****", "****"]);
      // The cursor declared before the savepoint is still its own.
      expect(firstValues(await c.exchange(serialize.query("FETCH ALL FROM kept")))).toEqual(["hello"]);
      const executed = await c.exchange(serialize.execute({ portal: "P" }), serialize.sync());
      expect(errors(executed).map((e) => e.code)).toEqual(["42501"]);
      expect(leaked(executed)).toBe(false);
    });
  });

  it("reads a SQL prepared statement as any column until its PREPARE has succeeded", async () => {
    await withMasked(["db:function"], async (c) => {
      await c.exchange(serialize.query("SELECT prep_lower()"));
      const prepared = await c.exchange(serialize.query("PREPARE s AS SELECT v AS n FROM inbox"));
      expect(errors(prepared).map((e) => e.code)).toEqual(["42P05"]);
      const ms = await c.exchange(serialize.query("EXECUTE s"));
      expect(firstValues(ms)).toEqual(["****", "****", "****"]);
      await c.exchange(serialize.query("PREPARE t AS SELECT v AS n FROM inbox"));
      const own = await c.exchange(serialize.query("EXECUTE t"));
      expect(firstValues(own)).toEqual(["hello"]);
    });
  });
});

describe("what a transaction end or a ROLLBACK TO closes (review 32)", () => {
  const q = (text: string) => serialize.query(text);
  const ext = (text: string) => [serialize.parse({ text }), serialize.bind({}), serialize.execute({})];
  const reopened = async (c: Raw, name: string) => {
    await c.exchange(q(`SELECT open_lower('${name}')`));
    return firstValues(await c.exchange(q(`FETCH ALL FROM "${name}"`)));
  };

  it("forgets cursors at COMMIT / ROLLBACK AND CHAIN and at a COMMIT or ROLLBACK inside one Query", async () => {
    const masked = await startMasked(["db:function"]);
    try {
      const declare = (hold: string) => `DECLARE c CURSOR ${hold} FOR SELECT v AS n FROM inbox`;
      const flows: Buffer[][] = [
        [q(`BEGIN; ${declare("WITH HOLD")}`), q("ROLLBACK AND CHAIN"), q("COMMIT"), q("BEGIN")],
        [q(`BEGIN; ${declare("WITH HOLD")}; ROLLBACK; BEGIN; COMMIT`), q("BEGIN")],
        [q(`BEGIN; ${declare("")}`), q("COMMIT AND CHAIN")],
        [q(`BEGIN; ${declare("")}; COMMIT; BEGIN`)],
      ];
      for (const flow of flows) {
        const c = await open(masked);
        for (const m of flow) await c.exchange(m);
        expect(await reopened(c, "c")).toEqual(["****", "****", "****"]);
        c.socket.destroy();
      }
    } finally {
      await masked.close();
    }
  });

  it("takes what a ROLLBACK TO or SAVEPOINT portal covers when it runs, not when it was bound", async () => {
    await withMasked(["db:function"], async (c, masked) => {
      await c.exchange(q("BEGIN; SAVEPOINT a"));
      await c.exchange(serialize.parse({ name: "s", text: "SELECT v AS n FROM inbox" }), serialize.sync());
      const rollback = serialize.parse({ name: "r", text: "ROLLBACK TO SAVEPOINT a" });
      await c.exchange(rollback, serialize.bind({ portal: "R", statement: "r" }), serialize.sync());
      await c.exchange(
        serialize.bind({ portal: "P", statement: "s" }),
        serialize.describe({ type: "P", name: "P" }),
        serialize.sync(),
      );
      await c.exchange(serialize.execute({ portal: "R" }), serialize.sync());
      await c.exchange(q("SELECT open_lower('P')"));
      const executed = await c.exchange(serialize.execute({ portal: "P" }), serialize.sync());
      expect(errors(executed).map((e) => e.code)).toEqual(["42501"]);
      expect(leaked(executed)).toBe(false);
      c.socket.destroy();
      // A SAVEPOINT bound before a portal and run after it: a ROLLBACK TO it keeps that portal.
      const d = await open(masked);
      await d.exchange(q("BEGIN"));
      await d.exchange(serialize.parse({ name: "s", text: "SELECT id FROM t ORDER BY id" }), serialize.sync());
      const savepoint = serialize.parse({ name: "sp", text: "SAVEPOINT a" });
      await d.exchange(savepoint, serialize.bind({ portal: "S", statement: "sp" }), serialize.sync());
      const page = (rows: number) => [serialize.execute({ portal: "P", rows }), serialize.sync()];
      await d.exchange(
        serialize.bind({ portal: "P", statement: "s" }),
        serialize.describe({ type: "P", name: "P" }),
        ...page(1),
      );
      await d.exchange(serialize.execute({ portal: "S" }), serialize.sync());
      await d.exchange(q("SELECT 1/0"));
      await d.exchange(q("ROLLBACK TO a"));
      expect(firstValues(await d.exchange(...page(1)))).toEqual(["2"]);
      d.socket.destroy();
    });
  });

  it("keeps a WITH HOLD cursor its implicit transaction committed across a later ROLLBACK (review 33)", async () => {
    const masked = await startMasked(["db:function"]);
    try {
      const hold = (name: string) => `DECLARE ${name} CURSOR WITH HOLD FOR SELECT upper(v) AS n FROM inbox`;
      const flows: Buffer[][][] = [
        // A pool's bare ROLLBACK with no transaction in progress; BEGIN ... ROLLBACK; the extended protocol.
        [[q(hold("h"))], [q("ROLLBACK")]],
        [[q(hold("h"))], [q("BEGIN")], [q("ROLLBACK")]],
        [
          [...ext(hold("h")), serialize.sync()],
          [...ext("BEGIN"), serialize.sync()],
          [...ext("ROLLBACK"), serialize.sync()],
        ],
        [[q(`BEGIN; ${hold("g")}; COMMIT`)], [q(hold("h"))], [q("BEGIN; SELECT 1")], [q("ROLLBACK")]],
      ];
      for (const trips of flows) {
        const c = await open(masked);
        for (const messages of trips) await c.exchange(...messages);
        expect(firstValues(await c.exchange(q("FETCH ALL FROM h")))).toEqual(["HELLO"]);
        c.socket.destroy();
      }
    } finally {
      await masked.close();
    }
  });

  it("keeps what clients keep open across savepoints and commits (pgjdbc autosave, psycopg2 WITH HOLD)", async () => {
    await withMasked([], async (c, masked) => {
      await c.exchange(...ext("BEGIN"), serialize.sync());
      const page = [serialize.execute({ portal: "C_1", rows: 2 }), serialize.sync()];
      const ids = serialize.parse({ name: "S_1", text: "SELECT id FROM t ORDER BY id" });
      await c.exchange(
        ids,
        serialize.bind({ portal: "C_1", statement: "S_1" }),
        serialize.describe({ type: "P", name: "C_1" }),
        ...page,
      );
      await c.exchange(...ext("SAVEPOINT PGJDBC_AUTOSAVE"), ...ext("SELECT 1/0"), serialize.sync());
      await c.exchange(...ext("ROLLBACK TO SAVEPOINT PGJDBC_AUTOSAVE"), serialize.sync());
      expect(firstValues(await c.exchange(...page))).toEqual(["3", "4"]);
      await c.exchange(...ext("RELEASE SAVEPOINT PGJDBC_AUTOSAVE"), serialize.sync());
      expect(firstValues(await c.exchange(...page))).toEqual(["5", "6"]);
      c.socket.destroy();
      const d = await open(masked);
      await d.exchange(q('BEGIN; DECLARE "c_1" CURSOR WITH HOLD FOR SELECT id FROM t ORDER BY id'));
      await d.exchange(q("COMMIT"));
      const first = firstValues(await d.exchange(q('FETCH FORWARD 3 FROM "c_1"')));
      await d.exchange(q("BEGIN; SELECT 1/0"));
      await d.exchange(q("ROLLBACK"));
      const next = firstValues(await d.exchange(q('FETCH FORWARD 3 FROM "c_1"')));
      expect([...first, ...next]).toEqual(["1", "2", "3", "4", "5", "6"]);
      d.socket.destroy();
    });
  });
});

describe("audit of portals", () => {
  const summary = (harness: Harness, text: string) =>
    queryEvents(harness)
      .filter(({ q }) => q.text === text)
      .map(({ ev, q }) => [ev.verdict, Number(q.rows), ev.message]);

  it("records a portal refused once and run after the policy allows it again (review 24)", async () => {
    const harness = await startHarness({ pg: server, policies: [readPolicy()] });
    try {
      const c = await open(harness);
      const text = "SELECT id FROM t WHERE id < 4";
      await c.exchange(serialize.query("BEGIN"));
      await c.exchange(
        serialize.parse({ name: "a", text }),
        serialize.bind({ portal: "P", statement: "a" }),
        serialize.describe({ type: "P", name: "P" }),
        serialize.sync(),
      );
      await c.exchange(serialize.query("SAVEPOINT a"));
      const policy = readPolicy() as { spec: { rules: object[] } };
      policy.spec.rules.push({ name: "no-t", effect: "deny", actions: ["db:*"], tables: ["public.t"] });
      harness.setPolicies([policy]);
      expect(errors(await c.exchange(serialize.execute({ portal: "P" }), serialize.sync()))[0]?.code).toBe("42501");
      await c.exchange(serialize.query("ROLLBACK TO SAVEPOINT a"));
      harness.setPolicies([readPolicy()]);
      expect(firstValues(await c.exchange(serialize.execute({ portal: "P" }), serialize.sync()))).toEqual([
        "1",
        "2",
        "3",
      ]);
      await c.exchange(serialize.query("COMMIT"));
      c.socket.destroy();
      await new Promise((r) => setTimeout(r, 300));
      expect(summary(harness, text).map(([verdict, rows]) => [verdict, rows])).toEqual([
        [2, 0],
        [1, 3],
      ]);
    } finally {
      await harness.close();
    }
  });

  it("records a statement's own 34000 error after rows as its failure, in its Sync cycle or a later one (reviews 24, 25)", async () => {
    const harness = await startHarness({ pg: server, policies: [readPolicy(["db:function"])] });
    try {
      const c = await open(harness);
      const text = "SELECT boom(id) FROM t";
      await c.exchange(
        serialize.parse({ name: "a", text }),
        serialize.bind({ portal: "P", statement: "a" }),
        serialize.execute({ portal: "P", rows: 3 }),
        serialize.execute({ portal: "P", rows: 3 }),
        serialize.sync(),
      );
      await c.exchange(serialize.query("BEGIN"));
      await c.exchange(
        serialize.bind({ portal: "Q", statement: "a" }),
        serialize.execute({ portal: "Q", rows: 3 }),
        serialize.sync(),
      );
      await c.exchange(serialize.execute({ portal: "Q", rows: 3 }), serialize.sync());
      c.socket.destroy();
      await new Promise((r) => setTimeout(r, 300));
      expect(summary(harness, text)).toEqual([
        [1, 3, "failed on the target: the fourth row failed"],
        [1, 3, "failed on the target: the fourth row failed"],
      ]);
    } finally {
      await harness.close();
    }
  });
});
