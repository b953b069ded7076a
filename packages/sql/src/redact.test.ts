import { beforeAll, describe, expect, it } from "vitest";
import {
  auditParameters,
  auditRedaction,
  createClassifier,
  loadSqlParser,
  redactFor,
  redactLiterals,
  redactMessage,
  unparsedAuditText,
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

  it("reads comments, tags and tokens as PostgreSQL's lexer does (review 18)", () => {
    // A -- comment ends at a carriage return too: what follows is SQL.
    expect(redactLiterals("ALTER ROLE bob --x\rPASSWORD 'hunter2'")).toBe("ALTER ROLE bob --x\rPASSWORD '***'");
    // A dollar quote's tag has no length limit.
    const tag = `$${"x".repeat(70)}$`;
    expect(redactLiterals(`ALTER ROLE bob PASSWORD ${tag}hunter2${tag}`)).toBe("ALTER ROLE bob PASSWORD '***'");
    // A $ after a number starts a dollar quote; one inside an identifier does not; quotes may touch.
    expect(redactLiterals("ALTER ROLE bob CONNECTION LIMIT 1$$hunter2$$")).toBe(
      "ALTER ROLE bob CONNECTION LIMIT 1'***'",
    );
    expect(redactLiterals("SELECT a$b, $a$x$a$$b$hunter2$b$")).toBe("SELECT a$b, '***''***'");
    expect(redactLiterals("SELECT 1e5$$postgres://u:hunter2@h/db$$, 0x1F$$a$$, 1_000$$b$$")).toBe(
      "SELECT 1e5'***', 0x1F'***', 1_000'***'",
    );
    expect(redactLiterals("SELECT e'a\\'b' , xe'c'")).toBe("SELECT e'***' , xe'***'");
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

describe("auditRedaction", () => {
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
      // Review 18: more places a password or connection string is written.
      "CREATE FOREIGN DATA WRAPPER w OPTIONS (password 'x')",
      "ALTER FOREIGN DATA WRAPPER w OPTIONS (ADD password 'x')",
      "IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO public OPTIONS (password 'x')",
      "CREATE FOREIGN TABLE ft (a int) SERVER srv OPTIONS (password 'x')",
      "COPY t FROM PROGRAM 'PGPASSWORD=x psql -c ...'",
      "SELECT set_config('app.db_password', 'x', false)",
      "SET app.password = 'x'",
      "ALTER ROLE app SET app.password = 'x'",
      "ALTER DATABASE d SET app.secret = 'x'",
      "ALTER FUNCTION f() SET app.conninfo = 'password=x'",
    ])
      expect(auditRedaction(info(sql), sql), sql).not.toBe("none");
    for (const sql of [
      "SELECT 'x'",
      "UPDATE t SET password = 'x'",
      "ALTER ROLE app SET search_path = x",
      "SET work_mem = '64MB'",
      "SELECT set_config('search_path', 'x', false)",
      "COPY t FROM STDIN",
    ])
      expect(auditRedaction(info(sql), sql), sql).toBe("none");
  });
});

describe("redactFor(auditRedaction): code that sets a secret (DO blocks, function bodies)", () => {
  const audit = (sql: string) => {
    const r = classifier.classify(sql, ON);
    if (!r.ok) throw new Error(r.error.message);
    return redactFor(sql, auditRedaction(r.statements[0] as NonNullable<(typeof r.statements)[0]>, sql));
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
  it("keeps only the body as code: a default or SET value is replaced whole, whitespace or not (review 18)", () => {
    expect(
      audit(
        "CREATE FUNCTION f(c text DEFAULT $c$host=h password=hunter2$c$) RETURNS void LANGUAGE plpgsql SET app.conninfo = $s$password=hunter3 x$s$ AS $$BEGIN PERFORM dblink_connect(c); END$$",
      ),
    ).toBe(
      "CREATE FUNCTION f(c text DEFAULT '***') RETURNS void LANGUAGE plpgsql SET app.conninfo = '***' AS $$BEGIN PERFORM dblink_connect(c); END$$",
    );
    expect(audit("DO LANGUAGE plpgsql $$BEGIN EXECUTE 'ALTER ROLE a PASSWORD ''x'''; END$$")).toBe(
      "DO LANGUAGE plpgsql $$BEGIN EXECUTE '***'; END$$",
    );
  });
  it("replaces a setting's value whatever its spelling (review 19)", () => {
    expect(audit("SET app.password = hunter2")).toBe("SET app.password = ***");
    expect(audit('SET LOCAL app.token TO "Hunter2b!"')).toBe("SET LOCAL app.token TO ***");
    expect(audit("ALTER DATABASE app SET app.secret TO hunter2")).toBe("ALTER DATABASE app SET app.secret TO ***");
    expect(audit("ALTER ROLE bob SET app.password = 12345")).toBe("ALTER ROLE bob SET app.password = ***");
    expect(audit("ALTER FUNCTION f() SET app.password = hunter2")).toBe("ALTER FUNCTION f() SET app.password = ***");
    expect(audit("ALTER SYSTEM SET primary_conninfo = 'host=h password=x'")).toBe(
      "ALTER SYSTEM SET primary_conninfo = ***",
    );
    expect(audit("SET work_mem = 65536")).toBe("SET work_mem = 65536");
  });
  it("reads a LANGUAGE it cannot name as another language (review 19)", () => {
    expect(audit('DO $$ c = "host=h password=hunter2" $$ LANGUAGE/**/plpython3u')).toBe(
      "DO '***' LANGUAGE/**/plpython3u",
    );
    expect(audit('DO LANGUAGE $l$plpython3u$l$ $$ c = "password=hunter2" $$')).toBe("DO LANGUAGE '***' '***'");
  });
  it("replaces whole a body in another language than plpgsql or sql (review 18)", () => {
    expect(audit(`DO LANGUAGE plpython3u $$ plpy.execute("ALTER ROLE bob PASSWORD 'hunter2'") $$`)).toBe(
      "DO LANGUAGE plpython3u '***'",
    );
    expect(
      audit(`CREATE FUNCTION f() RETURNS void AS $$ pw = "hunter2" # it's the password $$ LANGUAGE plpython3u`),
    ).toBe("CREATE FUNCTION f() RETURNS void AS '***' LANGUAGE plpython3u");
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

describe("redactMessage", () => {
  it("drops what a message quotes", () => {
    expect(redactMessage('syntax error at or near "hunter2"')).toBe('syntax error at or near "***"');
    expect(redactMessage('missing "=" after "hunter2" in connection info string')).toBe(
      'missing "***" in connection info string',
    );
    expect(redactMessage('syntax error at or near ""hunter2""')).toBe('syntax error at or near "***"');
    expect(redactMessage("syntax error at or near \"'hunter2'\"")).toBe('syntax error at or near "***"');
    expect(redactMessage('invalid percent-encoded token: "hunter2%zz')).toBe('invalid percent-encoded token: "***"');
    expect(redactMessage("no quotes here")).toBe("no quotes here");
  });
});

describe("unparsedAuditText and auditParameters", () => {
  it("keeps a statement the parser refused without literals, cut after a secret-like word", () => {
    expect(unparsedAuditText("SELEC 'x' FROM t")).toBe("SELEC '***' FROM t");
    expect(unparsedAuditText("ALTER ROLE app PASSWORD hunter2")).toBe("ALTER ROLE app PASSWORD …");
    expect(unparsedAuditText('ALTER ROLE app PASSWORD "hunter2"')).toBe("ALTER ROLE app PASSWORD …");
    expect(unparsedAuditText("ALTER ROLE app PASSWORD")).toBe("ALTER ROLE app PASSWORD");
  });
  it("hides bound parameters of a statement that may hold a secret, or that sets configuration values", () => {
    const plain = { kind: "SelectStmt", functions: [], text: "SELECT $1" };
    const setConfig = { kind: "SelectStmt", functions: ["set_config"], text: "SELECT set_config($1, $2, false)" };
    expect(auditParameters(plain, "none", "$1 = 'a'")).toBe("$1 = 'a'");
    expect(auditParameters(plain, "literals", "$1 = 'a'")).toBe("***");
    expect(auditParameters(setConfig, "none", "$1 = 'app.password', $2 = 'x'")).toBe("***");
    // Whatever they look like: sent in binary with no declared type, they are rendered in hex, which
    // no word list reads (review 49: `app.password` / `hunter2` as '\x6170...').
    expect(auditParameters(setConfig, "none", "$1 = '\\x6170702e70617373776f7264', $2 = '\\x68756e74657232'")).toBe(
      "***",
    );
    expect(auditParameters(setConfig, "none", "$1 = 'work_mem', $2 = '1MB'")).toBe("***");
    const settings = { kind: "UpdateStmt", functions: [], text: "UPDATE pg_settings SET setting = $1 WHERE name = $2" };
    expect(auditParameters(settings, "none", "$1 = 'hunter3', $2 = 'app.password'")).toBe("***");
    const update = { kind: "UpdateStmt", functions: [], text: "UPDATE t SET a = $1" };
    expect(auditParameters(update, "none", "$1 = 'x'")).toBe("$1 = 'x'");
  });
  it("redacts settings changed through pg_settings, key-like setting names and foreign tables' options", () => {
    const text = "UPDATE pg_settings SET setting = 'hunter3' WHERE name = 'app.password'";
    expect(auditRedaction({ kind: "UpdateStmt", functions: [] }, text)).toBe("literals");
    const key = "SELECT set_config('app.api_key', 'abc123', false)";
    expect(auditRedaction({ kind: "SelectStmt", functions: ["set_config"] }, key)).toBe("literals");
    expect(auditRedaction({ kind: "VariableSetStmt", functions: [] }, "SET app.jwt = 'eyJ...'")).toBe("value");
    const fdw = "ALTER FOREIGN TABLE ft OPTIONS (SET password 'x')";
    expect(auditRedaction({ kind: "AlterTableStmt", functions: [] }, fdw)).toBe("literals");
    for (const spelled of [
      "ALTER TABLE ft OPTIONS (ADD password 'x')",
      "ALTER TABLE ft ALTER COLUMN c OPTIONS (ADD password 'x')",
      "ALTER FOREIGN /**/ TABLE ft OPTIONS (SET password 'x')",
    ])
      expect(auditRedaction({ kind: "AlterTableStmt", functions: [] }, spelled)).toBe("literals");
    expect(auditRedaction({ kind: "VariableSetStmt", functions: [] }, "SET app.passphrase = 'x'")).toBe("value");
    const prepared = "PREPARE u(text, text) AS UPDATE pg_settings SET setting = $2 WHERE name = $1";
    expect(auditParameters({ kind: "PrepareStmt", functions: [], text: prepared }, "none", "$1 = 'a'")).toBe("***");
    for (const named of ["app.private_key_pem", "app.signing_key_v2", "app.KEYRING"])
      expect(
        auditRedaction({ kind: "SelectStmt", functions: ["set_config"] }, `SELECT set_config('${named}', 'v', false)`),
      ).toBe("literals");
    const fdw2 = "ALTER FOREIGN TABLE ft OPTIONS (ADD filename '/x')";
    expect(auditRedaction({ kind: "AlterTableStmt", functions: [] }, fdw2)).toBe("literals");
    expect(auditRedaction({ kind: "AlterTableStmt", functions: [] }, "ALTER TABLE t ADD c text DEFAULT 'x'")).toBe(
      "none",
    );
    expect(
      auditRedaction({ kind: "SelectStmt", functions: ["set_config"] }, "SELECT set_config('work_mem', '1MB', false)"),
    ).toBe("none");
  });
});
