// Identities from the CLI, in-process against a real control plane (REST on a free port, SQLite in a
// temp dir): password login and its stored access token (expiry, revocation, logout), `moat token`
// for scripts, tokens, users, service accounts, API keys and groups, with their exit statuses.
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { randomId } from "@moat/common";
import { type RunningControlPlane } from "@moat/control-plane/server";
import { tempDir } from "@moat/testkit";
import { run } from "./cli.js";
import type { Input } from "./io.js";
import { addApiUser, bootstrapKey, fakeTty, startTestControlPlane } from "./test-support/fixtures.js";

const PASSWORD = "correct horse battery staple";
const JWT = /^eyJ[\w-]+\.[\w-]+\.[\w-]+$/;

let cp: RunningControlPlane;
let admin: Record<string, string>;
let memberKey: string;
let memberEmail: string;

beforeAll(async () => {
  cp = await startTestControlPlane();
  admin = { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: bootstrapKey(cp) };
  const member = await addApiUser(cp, "member");
  memberEmail = member.email;
  memberKey = member.key;
}, 30_000);

afterAll(async () => {
  await cp?.close();
});

interface Result {
  code: number;
  stdout: string;
  stderr: string;
  /** Requests the CLI made. */
  requests: string[];
}

async function moat(
  argv: string[],
  options: { env?: Record<string, string>; stdin?: string | Input; now?: () => Date } = {},
): Promise<Result> {
  let stdout = "";
  let stderr = "";
  const requests: string[] = [];
  const stdin =
    typeof options.stdin === "object"
      ? options.stdin
      : (Readable.from(options.stdin === undefined ? [] : [options.stdin]) as Input);
  const code = await run(argv, {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
    stdin,
    env: { HOME: tempDir("moat-home-"), ...options.env },
    ...(options.now ? { now: options.now } : {}),
    fetch: (input, init) => {
      requests.push(`${init?.method ?? "GET"} ${new URL(String(input)).pathname}`);
      return fetch(input, init);
    },
  });
  return { code, stdout, stderr, requests };
}

function parseJson<T = Record<string, unknown>>(text: string): T {
  return JSON.parse(text) as T;
}

/** The claims of a JWT, decoded without verifying it. */
function claimsOf(token: string): Record<string, unknown> {
  return parseJson(Buffer.from(token.split(".")[1] ?? "", "base64url").toString("utf8"));
}

/** A fresh config file path (nothing stored yet). */
function freshConfig(): Record<string, string> {
  return { MOAT_CONFIG: join(tempDir("moat-cfg-"), "moat", "config.json") };
}

function storedConfig(env: Record<string, string>): Record<string, string> {
  return parseJson(readFileSync(env.MOAT_CONFIG!, "utf8"));
}

/** Creates a user with a password through the CLI (as admin) and returns its email and id. */
async function createUser(
  extra: string[] = [],
  role = "member",
  password = PASSWORD,
): Promise<{ email: string; id: string }> {
  const email = `user-${randomId(6)}@example.com`;
  const result = await moat(["--json", "users", "create", email, "--role", role, "--password-stdin", ...extra], {
    env: admin,
    stdin: `${password}\n`,
  });
  expect(result.code, result.stderr).toBe(0);
  return { email, id: parseJson<{ id: string }>(result.stdout).id };
}

/** Logs `email` in with a password into a fresh config file; returns the config env. */
async function passwordLogin(email: string, password = PASSWORD): Promise<Record<string, string>> {
  const env = freshConfig();
  const login = await moat(["login", "--server", cp.httpUrl, "--email", email, "--password-stdin"], {
    env,
    stdin: `${password}\n`,
  });
  expect(login.code, login.stderr).toBe(0);
  return env;
}

describe("password login", () => {
  it("stores an access token (mode 0600) with its expiry and email, and never prints it", async () => {
    const { email } = await createUser(["--group", "engineers"]);
    const env = freshConfig();
    const login = await moat(["login", "--server", cp.httpUrl, "--email", email, "--password-stdin"], {
      env,
      stdin: `${PASSWORD}\n`,
    });
    expect(login.code, login.stderr).toBe(0);
    expect(login.stdout).toContain(`Logged in to ${cp.httpUrl} as ${email} (role member).`);
    expect(login.stdout).toMatch(/The access token is saved in .+ \(mode 0600\); it expires at .+ \(in 1[45]m\)/);
    expect(login.requests).toEqual(["POST /api/v1/auth/login", "GET /api/v1/whoami"]);

    const stored = storedConfig(env);
    expect(stored).toEqual({
      server: cp.httpUrl,
      accessToken: expect.stringMatching(JWT),
      accessTokenId: expect.any(String),
      accessTokenExpiresAt: expect.any(String),
      email,
    });
    expect(statSync(env.MOAT_CONFIG!).mode & 0o777).toBe(0o600);
    for (const secret of [PASSWORD, stored.accessToken!]) expect(login.stdout + login.stderr).not.toContain(secret);
    expect(claimsOf(stored.accessToken!)).toMatchObject({ sub: email, kind: "user", groups: ["engineers"] });
  });

  it("replaces a stored API key, and an API-key login replaces the token", async () => {
    const { email } = await createUser();
    const env = freshConfig();
    expect((await moat(["login", "--server", cp.httpUrl], { env, stdin: memberKey })).code).toBe(0);
    await moat(["login", "--email", email, "--password-stdin"], { env, stdin: PASSWORD });
    expect(storedConfig(env).apiKey).toBeUndefined();
    expect(storedConfig(env).accessToken).toMatch(JWT);
    expect((await moat(["login", "--api-key", memberKey], { env })).code).toBe(0);
    expect(Object.keys(storedConfig(env)).sort()).toEqual(["apiKey", "server"]);
  });

  it("--json prints the user and the expiry, not the token; MOAT_PASSWORD works", async () => {
    const { email } = await createUser();
    const env = { ...freshConfig(), MOAT_PASSWORD: PASSWORD };
    const login = await moat(["--json", "login", "--server", cp.httpUrl, "--email", email], { env });
    expect(login.code, login.stderr).toBe(0);
    const result = parseJson(login.stdout);
    expect(result).toMatchObject({
      server: cp.httpUrl,
      credential: "access-token",
      expiresAt: expect.any(String),
      user: { email, role: "member", kind: "user", tokenId: expect.any(String) },
    });
    expect(login.stdout).not.toContain(storedConfig(env).accessToken!);
  });

  it("prompts for the password on a terminal without echo", async () => {
    const { email } = await createUser();
    const env = freshConfig();
    const tty = fakeTty(`${PASSWORD}\r`);
    const login = await moat(["login", "--server", cp.httpUrl, "--email", email], { env, stdin: tty });
    expect(login.code, login.stderr).toBe(0);
    expect(tty.rawModes).toEqual([true, false]);
    expect(login.stderr).toContain(`Password for ${email}: `);
    expect(login.stdout + login.stderr).not.toContain(PASSWORD);
  });

  it("a wrong password or unknown email exits 3, prints neither password and stores nothing", async () => {
    const { email } = await createUser();
    for (const who of [email, `nobody-${randomId(4)}@example.com`]) {
      const env = freshConfig();
      const result = await moat(["login", "--server", cp.httpUrl, "--email", who, "--password-stdin"], {
        env,
        stdin: "wrong password!!\n",
      });
      expect(result.code).toBe(3);
      expect(result.stderr).toContain("moat: wrong email or password (unauthenticated)");
      expect(result.stderr).not.toContain("wrong password!!");
      expect(() => readFileSync(env.MOAT_CONFIG!)).toThrow();
    }
    const json = await moat(["--json", "login", "--server", cp.httpUrl, "--email", email, "--password-stdin"], {
      stdin: "wrong password!!\n",
    });
    expect(parseJson(json.stderr)).toMatchObject({ status: 401, code: "unauthenticated" });
  });

  it("usage errors: no password off a terminal, --email with --api-key, --password-stdin without an email", async () => {
    const env = freshConfig();
    const noPassword = await moat(["login", "--server", cp.httpUrl, "--email", "a@example.com"], { env });
    expect(noPassword.code).toBe(2);
    expect(noPassword.stderr).toContain("--password-stdin");
    expect(
      (await moat(["login", "--server", cp.httpUrl, "--email", "a@example.com", "--api-key", memberKey], { env })).code,
    ).toBe(2);
    expect((await moat(["login", "--server", cp.httpUrl, "--password-stdin"], { env, stdin: PASSWORD })).code).toBe(2);
    const empty = await moat(["login", "--server", cp.httpUrl, "--email", "a@example.com", "--password-stdin"], {
      env,
      stdin: "\n",
    });
    expect(empty.code).toBe(2);
  });

  it("whoami and status show the user and that the credential is an access token", async () => {
    const { email } = await createUser(["--group", "dbas"]);
    const env = await passwordLogin(email);
    const tokenId = storedConfig(env).accessTokenId!;

    const whoami = await moat(["whoami"], { env });
    expect(whoami.code, whoami.stderr).toBe(0);
    expect(whoami.stdout).toMatch(new RegExp(`^User: +${email}$`, "m"));
    expect(whoami.stdout).toMatch(/^Groups: +dbas$/m);
    expect(whoami.stdout).toMatch(
      new RegExp(`^Auth: +access token ${tokenId} \\(password login\\), expires .+\\(in`, "m"),
    );
    expect(parseJson((await moat(["whoami", "--json"], { env })).stdout)).toMatchObject({ email, tokenId });

    const status = await moat(["status"], { env });
    expect(status.code, status.stderr).toBe(0);
    expect(status.stdout).toContain(`${email} (role member)`);
    expect(status.stdout).toMatch(/^Auth: +access token \S+ \(password login\), expires /m);
    const json = parseJson((await moat(["status", "--json"], { env })).stdout);
    expect(json).toMatchObject({ auth: { method: "access-token", tokenId, expiresAt: expect.any(String) } });

    const keyStatus = parseJson((await moat(["status", "--json"], { env: admin })).stdout);
    expect(keyStatus).toMatchObject({ auth: { method: "api-key", source: "env", apiKeyId: expect.any(String) } });
    expect((await moat(["status"], { env: admin })).stdout).toMatch(/^Auth: +API key \S+ \(from MOAT_API_KEY\)$/m);
  });

  it("an expired stored token exits 3 without being sent; `moat login` asks for the same email again", async () => {
    const { email } = await createUser();
    const env = await passwordLogin(email);
    const stored = storedConfig(env);
    writeFileSync(env.MOAT_CONFIG!, JSON.stringify({ ...stored, accessTokenExpiresAt: "2020-01-01T00:00:00.000Z" }), {
      mode: 0o600,
    });

    for (const argv of [["whoami"], ["agents", "list"], ["token"], ["tokens", "list"]]) {
      const result = await moat(argv, { env });
      expect(result.code).toBe(3);
      expect(result.stderr).toContain("moat: your session expired: run moat login again (session_expired)");
      expect(result.stderr).toContain(`moat login --server ${cp.httpUrl} --email ${email}`);
      expect(result.requests).toEqual([]);
      expect(result.stdout).toBe("");
    }
    const status = await moat(["status"], { env });
    expect(status.code).toBe(3);
    expect(status.requests).toEqual(["GET /readyz"]);
    const json = await moat(["--json", "whoami"], { env });
    expect(parseJson(json.stderr)).toMatchObject({ code: "session_expired", type: "urn:moat:cli:session_expired" });

    // The clock is the CLI's: the same token counts as expired once its stored expiry has passed.
    await moat(["login", "--email", email, "--password-stdin"], { env, stdin: PASSWORD });
    const later = new Date(Date.parse(storedConfig(env).accessTokenExpiresAt!) + 1000);
    expect((await moat(["whoami"], { env, now: () => later })).code).toBe(3);

    // Without --email, login uses the stored email again.
    const again = await moat(["login", "--password-stdin"], { env, stdin: `${PASSWORD}\n` });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain(`as ${email}`);
    expect((await moat(["whoami"], { env })).code).toBe(0);
  });

  it("logout revokes the token and removes it, keeping the server", async () => {
    const { email } = await createUser();
    const env = await passwordLogin(email);
    const token = storedConfig(env).accessToken!;
    const logout = await moat(["logout"], { env });
    expect(logout.code, logout.stderr).toBe(0);
    expect(logout.stdout).toContain("the access token was revoked and removed");
    expect(storedConfig(env)).toEqual({ server: cp.httpUrl });
    const rejected = await moat(["whoami"], { env: { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: token } });
    expect(rejected.code).toBe(3);
  });
});

describe("moat token", () => {
  it("with an API key prints a fresh JWT for the key's owner; --json prints the API object", async () => {
    const result = await moat(["token"], { env: admin });
    expect(result.code, result.stderr).toBe(0);
    const token = result.stdout.trimEnd();
    expect(result.stdout).toBe(`${token}\n`);
    expect(token.split(".")).toHaveLength(3);
    expect(token).toMatch(JWT);
    expect(claimsOf(token)).toMatchObject({ sub: "admin@moat.local", kind: "user" });

    const json = await moat(["--json", "token"], { env: admin });
    const issued = parseJson<{ accessToken: string; tokenId: string }>(json.stdout);
    expect(issued).toMatchObject({ tokenType: "Bearer", accessToken: expect.stringMatching(JWT) });
    expect(issued.accessToken).not.toBe(token);
    // The printed token is for agents: the API refuses it.
    expect(claimsOf(token)).toMatchObject({ aud: "moat-agents" });
    const whoami = await moat(["--json", "whoami"], { env: { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: token } });
    expect(whoami.code).toBe(3);
  });

  it("after a password login mints a token for agents with the login's token", async () => {
    const { email } = await createUser();
    const env = await passwordLogin(email);
    const stored = storedConfig(env);
    const result = await moat(["token"], { env });
    expect(result.code, result.stderr).toBe(0);
    const token = result.stdout.trimEnd();
    expect(token).not.toBe(stored.accessToken);
    expect(result.requests).toEqual(["POST /api/v1/tokens"]);
    expect(claimsOf(token)).toMatchObject({ sub: email, aud: "moat-agents" });
    expect(claimsOf(stored.accessToken as string)).toMatchObject({ aud: "moat-api" });
  });
});

describe("moat tokens", () => {
  it("lists your tokens, revokes one, and the revoked login then fails with exit 3", async () => {
    const { email, id } = await createUser();
    const env = await passwordLogin(email);
    const tokenId = storedConfig(env).accessTokenId!;

    const list = await moat(["tokens", "list"], { env });
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout.split("\n")[0]).toMatch(/^ID +SOURCE +STATE +ISSUED +EXPIRES$/);
    expect(list.stdout).toMatch(new RegExp(`^${tokenId} +password +active +.+\\(this login\\)$`, "m"));

    // Admins list anyone's, by email or id.
    for (const ref of [email, id]) {
      const items = parseJson<{ items: { id: string; userId: string }[] }>(
        (await moat(["--json", "tokens", "list", "--user", ref], { env: admin })).stdout,
      ).items;
      expect(items.map((t) => t.id)).toContain(tokenId);
    }
    // A member may not list someone else's.
    expect((await moat(["tokens", "list", "--user", "admin@moat.local"], { env })).code).toBe(4);

    const revoke = await moat(["tokens", "revoke", tokenId], { env: admin });
    expect(revoke.code, revoke.stderr).toBe(0);
    expect(revoke.stdout).toContain(`Revoked access token ${tokenId}`);

    for (const argv of [["whoami"], ["token"], ["users", "get", "me"]]) {
      const after = await moat(argv, { env });
      expect(after.code).toBe(3);
      expect(after.stderr).toContain("moat: your session expired: run moat login again (session_expired)");
    }
    const listed = parseJson<{ items: { id: string; revokedAt: string | null }[] }>(
      (await moat(["--json", "tokens", "list", "--user", id], { env: admin })).stdout,
    ).items;
    expect(listed.find((t) => t.id === tokenId)?.revokedAt).toEqual(expect.any(String));

    expect((await moat(["tokens", "revoke", "no-such-token"], { env: admin })).code).toBe(5);
  });
});

describe("moat users", () => {
  it("create, list, get (by email, id and me), set, disable and enable", async () => {
    const email = `carol-${randomId(4)}@example.com`;
    const create = await moat(
      [
        "users",
        "create",
        email,
        "--role",
        "member",
        "--group",
        "engineers",
        "--group",
        "oncall",
        "--display-name",
        "Carol",
      ],
      { env: admin },
    );
    expect(create.code, create.stderr).toBe(0);
    expect(create.stdout).toMatch(new RegExp(`^Created user ${email} \\(id \\w+, role member\\)\\.$`, "m"));
    expect(create.stdout).toContain(`moat users password ${email} --password-stdin`);

    const list = await moat(["users", "list"], { env: admin });
    expect(list.code).toBe(0);
    expect(list.stdout.split("\n")[0]).toMatch(/^USER +ID +KIND +ROLE +GROUPS +PASSWORD +STATUS +CREATED$/);
    expect(list.stdout).toMatch(new RegExp(`^${email} +\\w+ +user +member +engineers,oncall +no +active +`, "m"));
    const items = parseJson<{ items: { email: string; id: string }[] }>(
      (await moat(["users", "list", "--json"], { env: admin })).stdout,
    ).items;
    const id = items.find((u) => u.email === email)!.id;

    for (const ref of [email, email.toUpperCase(), id]) {
      const get = await moat(["users", "get", ref], { env: admin });
      expect(get.code, get.stderr).toBe(0);
      expect(get.stdout).toMatch(new RegExp(`^Email: +${email}$`, "m"));
      expect(get.stdout).toMatch(/^Display name: +Carol$/m);
      expect(get.stdout).toMatch(/^Groups: +engineers, oncall$/m);
    }
    expect(parseJson((await moat(["--json", "users", "get", "me"], { env: admin })).stdout)).toMatchObject({
      email: "admin@moat.local",
      role: "admin",
    });
    expect((await moat(["users", "get", "nobody@example.com"], { env: admin })).code).toBe(5);

    const set = await moat(["--json", "users", "set", email, "--role", "reviewer", "--group", "dbas"], { env: admin });
    expect(set.code, set.stderr).toBe(0);
    expect(parseJson(set.stdout)).toMatchObject({ role: "reviewer", groups: ["dbas"], displayName: "Carol" });
    const cleared = await moat(["--json", "users", "set", id, "--no-groups", "--display-name", "C."], { env: admin });
    expect(parseJson(cleared.stdout)).toMatchObject({ groups: [], displayName: "C.", role: "reviewer" });
    expect((await moat(["users", "set", email], { env: admin })).code).toBe(2);
    expect((await moat(["users", "set", email, "--group", "a", "--no-groups"], { env: admin })).code).toBe(2);
    expect((await moat(["users", "set", email, "--role", "root"], { env: admin })).code).toBe(2);

    const disable = await moat(["users", "disable", email], { env: admin });
    expect(disable.code, disable.stderr).toBe(0);
    expect(disable.stdout).toContain(`Disabled ${email}`);
    expect(parseJson((await moat(["--json", "users", "get", id], { env: admin })).stdout)).toMatchObject({
      disabled: true,
    });
    expect((await moat(["users", "list"], { env: admin })).stdout).toMatch(new RegExp(`^${email} .+ disabled +`, "m"));
    const enable = await moat(["--json", "users", "enable", id], { env: admin });
    expect(enable.code).toBe(0);
    expect(parseJson(enable.stdout)).toMatchObject({ disabled: false });
  });

  it("a disabled user cannot log in, and their stored token stops working; enabled they can again", async () => {
    const { email } = await createUser();
    const env = await passwordLogin(email);
    expect((await moat(["users", "disable", email], { env: admin })).code).toBe(0);
    expect((await moat(["whoami"], { env })).code).toBe(3);
    const login = await moat(["login", "--server", cp.httpUrl, "--email", email, "--password-stdin"], {
      env: freshConfig(),
      stdin: PASSWORD,
    });
    expect(login.code).toBe(3);
    expect(login.stderr).toContain("wrong email or password");
    expect((await moat(["users", "enable", email], { env: admin })).code).toBe(0);
    await passwordLogin(email);
  });

  it("a duplicate email exits 6, an invalid one 2, a short password 2; an admin cannot disable themselves", async () => {
    const { email } = await createUser();
    expect((await moat(["users", "create", email, "--role", "member"], { env: admin })).code).toBe(6);
    expect((await moat(["users", "create", "not-an-email", "--role", "member"], { env: admin })).code).toBe(2);
    expect((await moat(["users", "create", "x@example.com"], { env: admin })).code).toBe(2);
    const short = await moat(
      ["users", "create", `s-${randomId(4)}@example.com`, "--role", "member", "--password-stdin"],
      {
        env: admin,
        stdin: "short\n",
      },
    );
    expect(short.code).toBe(2);
    expect(short.stderr).toContain("body/password: must be at least 12 characters");
    const self = await moat(["users", "disable", "admin@moat.local"], { env: admin });
    expect(self.code).toBe(2);
    expect(self.stderr).toContain("(bad_request)");
  });

  it("password: an admin sets a new password, the old one stops working and the new one logs in", async () => {
    const { email } = await createUser();
    const newPassword = "a much better passphrase";
    const change = await moat(["users", "password", email, "--password-stdin"], {
      env: admin,
      stdin: `${newPassword}\n`,
    });
    expect(change.code, change.stderr).toBe(0);
    expect(change.stdout).toContain(`Changed the password of ${email}`);
    expect(change.stdout + change.stderr).not.toContain(newPassword);

    const old = await moat(["login", "--server", cp.httpUrl, "--email", email, "--password-stdin"], {
      env: freshConfig(),
      stdin: PASSWORD,
    });
    expect(old.code).toBe(3);
    await passwordLogin(email, newPassword);

    // Off a terminal, the password must be piped explicitly.
    expect((await moat(["users", "password", email], { env: admin, stdin: newPassword })).code).toBe(2);
  });

  it("link-oidc and unlink-oidc bind a user to an identity-provider account (admins only)", async () => {
    const email = `sso-${randomId(6).toLowerCase()}@example.com`;
    expect((await moat(["users", "create", email, "--role", "member"], { env: admin })).code).toBe(0);
    // Without single sign-on configured here, the issuer must be given.
    const noIssuer = await moat(["users", "link-oidc", email, "--subject", "abc"], { env: admin });
    expect(noIssuer.code).toBe(2);
    const link = await moat(["users", "link-oidc", email, "--subject", "abc", "--issuer", "https://idp.example"], {
      env: admin,
    });
    expect(link.code, link.stderr).toBe(0);
    expect(link.stdout).toContain(`Linked ${email} to the identity-provider account abc of https://idp.example`);
    expect((await moat(["users", "get", email], { env: admin })).stdout).toMatch(
      /Single sign-on: +abc at https:\/\/idp\.example/,
    );
    // One account, one user.
    const other = `sso-${randomId(6).toLowerCase()}@example.com`;
    expect((await moat(["users", "create", other, "--role", "member"], { env: admin })).code).toBe(0);
    const taken = await moat(["users", "link-oidc", other, "--subject", "abc", "--issuer", "https://idp.example"], {
      env: admin,
    });
    expect(taken.code).toBe(6);
    const member = { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: memberKey };
    expect(
      (await moat(["users", "link-oidc", "me", "--subject", "x", "--issuer", "https://idp.example"], { env: member }))
        .code,
    ).toBe(4);
    const unlink = await moat(["users", "unlink-oidc", email], { env: admin });
    expect(unlink.code, unlink.stderr).toBe(0);
    expect(parseJson((await moat(["--json", "users", "get", email], { env: admin })).stdout)).toMatchObject({
      oidc: null,
    });
  });

  it("a member cannot list, create or change users (exit 4), but may get themselves", async () => {
    const member = { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: memberKey };
    const list = await moat(["users", "list"], { env: member });
    expect(list.code).toBe(4);
    expect(list.stderr).toContain("(permission_denied)");
    expect(parseJson((await moat(["--json", "users", "list"], { env: member })).stderr)).toMatchObject({
      status: 403,
      code: "permission_denied",
    });
    expect((await moat(["users", "create", "x@example.com", "--role", "admin"], { env: member })).code).toBe(4);
    expect((await moat(["users", "disable", "admin@moat.local"], { env: member })).code).toBe(4);
    for (const ref of ["me", memberEmail]) {
      const get = await moat(["--json", "users", "get", ref], { env: member });
      expect(get.code, get.stderr).toBe(0);
      expect(parseJson(get.stdout)).toMatchObject({ email: memberEmail, role: "member" });
    }
  });
});

describe("service accounts and API keys", () => {
  it("a service account with an API key gets access tokens of kind service-account", async () => {
    const name = `ci-${randomId(6)}`;
    const created = await moat(["sa", "create", name, "--role", "reviewer", "--group", "deployers"], { env: admin });
    expect(created.code, created.stderr).toBe(0);
    expect(created.stdout).toContain(`Created service account ${name}`);
    expect(created.stdout).toContain(`moat api-keys create KEY-NAME --user ${name}`);
    const account = parseJson<{ kind: string; role: string }>(
      (await moat(["--json", "users", "get", name], { env: admin })).stdout,
    );
    expect(account).toMatchObject({ kind: "service-account", role: "reviewer", hasPassword: false });

    const keyResult = await moat(["api-keys", "create", "deploy", "--user", name, "--expires-in-days", "30"], {
      env: admin,
    });
    expect(keyResult.code, keyResult.stderr).toBe(0);
    expect(keyResult.stdout).toMatch(/^Created API key deploy \(id \w+\) for ci-\w+; valid until \S+ \(in 29d\)\.$/m);
    expect(keyResult.stdout).toContain("shown once");
    const apiKey = /^ {2}(moat_ak_\S+)$/m.exec(keyResult.stdout)?.[1];
    expect(apiKey).toBeDefined();

    const token = await moat(["token"], { env: { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: apiKey! } });
    expect(token.code, token.stderr).toBe(0);
    expect(claimsOf(token.stdout.trim())).toMatchObject({ sub: name, kind: "service-account", groups: ["deployers"] });

    // Service accounts have no password.
    const password = await moat(["users", "password", name, "--password-stdin"], { env: admin, stdin: PASSWORD });
    expect(password.code).toBe(2);
    expect((await moat(["service-accounts", "create", name], { env: admin })).code).toBe(6);
    expect((await moat(["service-accounts", "create", "Bad Name"], { env: admin })).code).toBe(2);
  });

  it("create (printed once), list and revoke your own keys; a revoked key exits 3", async () => {
    const member = { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: memberKey };
    const json = await moat(["--json", "api-keys", "create", "laptop"], { env: member });
    expect(json.code, json.stderr).toBe(0);
    const created = parseJson<{ key: { id: string; name: string; expiresAt: null }; apiKey: string }>(json.stdout);
    expect(created).toMatchObject({
      key: { name: "laptop", expiresAt: null },
      apiKey: expect.stringMatching(/^moat_ak_/),
    });

    const list = await moat(["api-keys", "list"], { env: member });
    expect(list.code).toBe(0);
    expect(list.stdout.split("\n")[0]).toMatch(/^NAME +ID +STATE +CREATED +EXPIRES +LAST USED$/);
    expect(list.stdout).toMatch(new RegExp(`^laptop +${created.key.id} +active +.+ +never +-$`, "m"));
    expect(list.stdout).not.toContain(created.apiKey);

    const own = { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: created.apiKey };
    expect((await moat(["whoami"], { env: own })).code).toBe(0);
    const revoke = await moat(["api-keys", "revoke", created.key.id], { env: member });
    expect(revoke.code, revoke.stderr).toBe(0);
    const rejected = await moat(["whoami"], { env: own });
    expect(rejected.code).toBe(3);
    expect(rejected.stderr).toContain("(unauthenticated)");
    expect((await moat(["api-keys", "list"], { env: member })).stdout).toMatch(
      new RegExp(`^laptop +${created.key.id} +revoked +`, "m"),
    );

    // Someone else's keys: admins only.
    expect((await moat(["api-keys", "list", "--user", "admin@moat.local"], { env: member })).code).toBe(4);
    const adminKeys = await moat(["--json", "api-keys", "list", "--user", memberEmail], { env: admin });
    expect(parseJson<{ items: { id: string }[] }>(adminKeys.stdout).items.map((k) => k.id)).toContain(created.key.id);
    expect((await moat(["api-keys", "revoke", "nope"], { env: member })).code).toBe(5);
    expect((await moat(["api-keys", "create", "x", "--expires-in-days", "0"], { env: member })).code).toBe(2);
  });
});

describe("moat groups", () => {
  it("lists groups with member counts; a member may not", async () => {
    const group = `g-${randomId(6)}`;
    await createUser(["--group", group]);
    await createUser(["--group", group]);
    const list = await moat(["groups", "list"], { env: admin });
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout.split("\n")[0]).toMatch(/^NAME +MEMBERS +DESCRIPTION$/);
    expect(list.stdout).toMatch(new RegExp(`^${group} +2 +-$`, "m"));
    const json = parseJson<{ items: { name: string; members: number }[] }>(
      (await moat(["groups", "list", "--json"], { env: admin })).stdout,
    );
    expect(json.items).toContainEqual(expect.objectContaining({ name: group, members: 2 }));
    expect((await moat(["groups", "list"], { env: { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: memberKey } })).code).toBe(
      4,
    );
  });
});
