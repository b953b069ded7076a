import { beforeAll, describe, expect, it } from "vitest";
import {
  auditStatementText,
  createClassifier,
  loadSqlParser,
  mayHoldSecrets,
  redactLiterals,
  type Classifier,
} from "./index.js";
import { ON } from "./test-helpers.js";

let classifier: Classifier;
beforeAll(async () => {
  await loadSqlParser();
  classifier = createClassifier({ cacheEntries: 0 });
});

describe("redactLiterals", () => {
  it("replaces every string literal, whatever its quoting", () => {
    expect(redactLiterals("ALTER ROLE app PASSWORD 'hunter2'")).toBe("ALTER ROLE app PASSWORD '***'");
    expect(redactLiterals("ALTER ROLE app PASSWORD 'it''s'")).toBe("ALTER ROLE app PASSWORD '***'");
    expect(redactLiterals("ALTER ROLE app PASSWORD E'a\\'b' VALID UNTIL 'infinity'")).toBe(
      "ALTER ROLE app PASSWORD E'***' VALID UNTIL '***'",
    );
    expect(redactLiterals("ALTER ROLE app PASSWORD $$x'y$$")).toBe("ALTER ROLE app PASSWORD '***'");
    expect(redactLiterals("ALTER ROLE app PASSWORD $p$x$$y$p$ LOGIN")).toBe("ALTER ROLE app PASSWORD '***' LOGIN");
    expect(redactLiterals(`ALTER ROLE "o'brien" PASSWORD 'x' -- it's 'y'\n`)).toBe(
      `ALTER ROLE "o'brien" PASSWORD '***' -- it's 'y'\n`,
    );
    expect(redactLiterals("SELECT $1, a$b FROM t")).toBe("SELECT $1, a$b FROM t");
    expect(redactLiterals("SELECT 1 /* 'c' /* nested */ */")).toBe("SELECT 1 /* 'c' /* nested */ */");
  });

  it("redacts to the end what it could misread", () => {
    expect(redactLiterals("ALTER ROLE app PASSWORD 'a\\'b' LOGIN")).toBe("ALTER ROLE app PASSWORD '***'");
    expect(redactLiterals("ALTER ROLE app PASSWORD 'unterminated")).toBe("ALTER ROLE app PASSWORD '***'");
    expect(redactLiterals("SELECT $x$open")).toBe("SELECT '***'");
  });
});

describe("redactLiterals, generated", () => {
  it("never leaves a literal's content, and never throws on arbitrary text", () => {
    let seed = 7;
    const rand = (k: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % k;
    };
    const pieces = ["'", "''", '"', "$", "$$", "$t$", "E", "\\", "--", "/*", "*/", "\n", " ", "a", "é", ";"];
    const literals = [
      (x: string) => `'${x}'`,
      (x: string) => `'it''s ${x}'`,
      (x: string) => `E'\\'${x}'`,
      (x: string) => `$$${x}'$$`,
      (x: string) => `$q$${x}$$$q$`,
    ];
    const noise = () =>
      Array.from({ length: rand(6) }, () => ["x", " ", '"i d"', "-- c\n", "/* c */", "1"][rand(6)]).join("");
    for (let k = 0; k < 5000; k++) {
      const secret = `SECRET${k}`;
      const literal = (literals[rand(literals.length)] as (x: string) => string)(secret);
      const text = `ALTER ROLE ${noise()} PASSWORD ${literal} ${noise()}`;
      expect(redactLiterals(text), text).not.toContain(secret);
      const junk = Array.from({ length: rand(20) }, () => pieces[rand(pieces.length)]).join("");
      expect(() => redactLiterals(junk)).not.toThrow();
    }
  });
});

describe("mayHoldSecrets", () => {
  const info = (sql: string) => {
    const r = classifier.classify(sql, ON);
    if (!r.ok) throw new Error(r.error.message);
    return r.statements[0] as NonNullable<(typeof r.statements)[0]>;
  };
  it("flags statements that set passwords or connection strings", () => {
    for (const sql of [
      "CREATE ROLE app LOGIN PASSWORD 'x'",
      "ALTER USER app WITH PASSWORD 'x'",
      "CREATE USER MAPPING FOR app SERVER s OPTIONS (user 'a', password 'x')",
      "ALTER USER MAPPING FOR app SERVER s OPTIONS (SET password 'x')",
      "CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'h', password 'x')",
      "CREATE SUBSCRIPTION sub CONNECTION 'host=h password=x' PUBLICATION p",
      "ALTER SUBSCRIPTION sub CONNECTION 'password=x'",
      "ALTER SYSTEM SET primary_conninfo = 'password=x'",
      "SELECT dblink_connect('c', 'password=x')",
      "SELECT * FROM public.dblink('password=x', 'SELECT 1') AS t(a int)",
    ])
      expect(mayHoldSecrets(info(sql)), sql).toBe(true);
    for (const sql of ["SELECT 'x'", "UPDATE t SET password = 'x'", "ALTER ROLE app SET search_path = x"])
      expect(mayHoldSecrets(info(sql)), sql).toBe(false);
  });
});

describe("auditStatementText: code that sets a secret (DO blocks, function bodies)", () => {
  const audit = (sql: string) => {
    const r = classifier.classify(sql, ON);
    if (!r.ok) throw new Error(r.error.message);
    return auditStatementText(r.statements[0] as NonNullable<(typeof r.statements)[0]>, sql);
  };
  it("keeps the code and replaces the literals inside it", () => {
    expect(audit("DO $$BEGIN EXECUTE 'ALTER ROLE app PASSWORD ''hunter2'''; END$$")).toBe(
      "DO $$BEGIN EXECUTE '***'; END$$",
    );
    expect(audit("DO $do$ BEGIN ALTER ROLE app PASSWORD 'hunter2'; END $do$ LANGUAGE plpgsql")).toBe(
      "DO $do$ BEGIN ALTER ROLE app PASSWORD '***'; END $do$ LANGUAGE plpgsql",
    );
    expect(
      audit("DO $$DECLARE pw text := $p$hunter2$p$; BEGIN EXECUTE format('ALTER ROLE app PASSWORD %L', pw); END$$"),
    ).toBe("DO $$DECLARE pw text := '***'; BEGIN EXECUTE format('***', pw); END$$");
    expect(
      audit(
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN PERFORM dblink_connect('c', 'password=hunter2'); END $f$",
      ),
    ).toBe(
      "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN PERFORM dblink_connect('***', '***'); END $f$",
    );
    expect(audit("CREATE PROCEDURE p() LANGUAGE sql AS $$ALTER ROLE app PASSWORD 'hunter2'$$")).toBe(
      "CREATE PROCEDURE p() LANGUAGE sql AS $$ALTER ROLE app PASSWORD '***'$$",
    );
  });
  it("replaces whole a body in single quotes and a dollar-quoted value", () => {
    expect(audit("DO 'BEGIN EXECUTE ''ALTER ROLE app PASSWORD ''''hunter2''''''; END'")).toBe("DO '***'");
    expect(
      audit("CREATE FUNCTION f(p text DEFAULT $$hunter2$$) RETURNS text LANGUAGE sql AS $$SELECT 'password'$$"),
    ).toBe("CREATE FUNCTION f(p text DEFAULT '***') RETURNS text LANGUAGE sql AS $$SELECT '***'$$");
  });
  it("keeps code that names no secret as written", () => {
    for (const sql of [
      "DO $$BEGIN DELETE FROM t WHERE name = 'bob'; END$$",
      "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$SELECT 1 WHERE 'a' = 'a'$$",
    ])
      expect(audit(sql), sql).toBe(sql);
  });
  it("never leaves a generated secret in a DO block or a body that sets it", () => {
    let seed = 7;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const quote = (v: string, k: number) =>
      k === 0 ? `'${v}'` : k === 1 ? `E'${v}'` : k === 2 ? `$$${v}$$` : `$q${k}$${v}$q${k}$`;
    let checked = 0;
    for (let n = 0; n < 600; n++) {
      const secret = `s3cr3t${n}x`;
      const inner = [
        `ALTER ROLE app PASSWORD ${quote(secret, rand(2))}`,
        `PERFORM dblink_connect('c', ${quote("password=" + secret, rand(2))})`,
        `v := ${quote(secret, 2 + rand(3))}; EXECUTE 'ALTER ROLE app PASSWORD ' || quote_literal(v)`,
        `EXECUTE ${quote("ALTER ROLE app PASSWORD '" + secret + "'", 3 + rand(2))}`,
      ][rand(4)] as string;
      const tag = ["$$", "$body$", "$x$"][rand(3)] as string;
      if (inner.includes(tag)) continue;
      const sql =
        rand(2) === 0
          ? `DO ${tag} DECLARE v text; BEGIN ${inner}; END ${tag}`
          : `CREATE FUNCTION f${n}() RETURNS void LANGUAGE plpgsql AS ${tag} DECLARE v text; BEGIN ${inner}; END ${tag}`;
      expect(audit(sql), sql).not.toContain(secret);
      expect(audit(sql), sql).toContain(" BEGIN ");
      checked++;
    }
    expect(checked).toBeGreaterThan(300);
  });
});
