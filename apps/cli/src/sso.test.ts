// Single sign-on from the CLI, in-process against a real control plane configured with a real OIDC
// issuer on loopback (@moat/testkit): the browser flow with the test playing the browser (the printed
// URL fetched from the issuer, its redirect followed to the CLI's callback server), the device flow,
// the stored token in use, group mapping, and the refusals (state mismatch, the issuer's error, a
// disabled user, single sign-on not configured, time limits). The device flow's polling rules
// (slow_down, expired_token, access_denied) are unit-tested against a fake token endpoint.
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { randomId } from "@moat/common";
import { type RunningControlPlane } from "@moat/control-plane/server";
import { startOidcIssuer, tempDir, type TestOidcIssuer } from "@moat/testkit";
import type { OidcConfig } from "./api-client.js";
import { run } from "./cli.js";
import { CliError } from "./errors.js";
import type { Input } from "./io.js";
import { createOutput } from "./output.js";
import { deviceFlow } from "./sso.js";
import { bootstrapKey, startTestControlPlane } from "./test-support/fixtures.js";

const JWT = /^eyJ[\w-]+\.[\w-]+\.[\w-]+$/;

let idp: TestOidcIssuer;
let cp: RunningControlPlane;
/** A control plane without single sign-on. */
let plain: RunningControlPlane;
let admin: Record<string, string>;

beforeAll(async () => {
  idp = await startOidcIssuer({ clientId: "moat-cli" });
  cp = await startTestControlPlane({
    oidc: {
      issuer: idp.issuer,
      clientId: "moat-cli",
      groupMapping: { "eng-all": "engineers", "sre-oncall": "oncall" },
    },
  });
  plain = await startTestControlPlane();
  admin = { MOAT_SERVER: cp.httpUrl, MOAT_API_KEY: bootstrapKey(cp) };
}, 60_000);

afterAll(async () => {
  await cp?.close();
  await plain?.close();
  await idp?.close();
});

interface Result {
  code: number;
  stdout: string;
  stderr: string;
  /** Requests the CLI made, to the control plane and to the issuer. */
  requests: string[];
}

/** A running `moat` whose output can be watched, as a user watches the terminal. */
interface Running {
  done: Promise<Result>;
  /** Resolves with the first match of `pattern` in stdout + stderr (polled; 10 s at most). */
  waitFor(pattern: RegExp): Promise<RegExpMatchArray>;
}

function start(
  argv: string[],
  options: { env?: Record<string, string>; now?: () => Date; openBrowser?: (url: string) => void } = {},
): Running {
  let stdout = "";
  let stderr = "";
  const requests: string[] = [];
  const done = run(argv, {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
    stdin: Readable.from([]) as Input,
    env: { HOME: tempDir("moat-home-"), ...options.env },
    ...(options.now ? { now: options.now } : {}),
    ...(options.openBrowser ? { openBrowser: options.openBrowser } : {}),
    fetch: (input, init) => {
      const url = new URL(String(input));
      requests.push(`${init?.method ?? "GET"} ${url.origin === idp.issuer ? "issuer:" : ""}${url.pathname}`);
      return fetch(input, init);
    },
  }).then((code) => ({ code, stdout, stderr, requests }));
  return {
    done,
    async waitFor(pattern) {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const match = (stdout + stderr).match(pattern);
        if (match) return match;
        if (Date.now() > deadline) throw new Error(`no ${pattern} in the output:\n${stdout}${stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    },
  };
}

function moat(argv: string[], options: Parameters<typeof start>[1] = {}): Promise<Result> {
  return start(argv, options).done;
}

function parseJson<T = Record<string, unknown>>(text: string): T {
  return JSON.parse(text) as T;
}

function claimsOf(token: string): Record<string, unknown> {
  return parseJson(Buffer.from(token.split(".")[1] ?? "", "base64url").toString("utf8"));
}

function freshConfig(): Record<string, string> {
  return { MOAT_CONFIG: join(tempDir("moat-cfg-"), "moat", "config.json") };
}

function storedConfig(env: Record<string, string>): Record<string, string> {
  return parseJson(readFileSync(env.MOAT_CONFIG!, "utf8"));
}

/** A new identity at the issuer, who logs in next. */
function newIdpUser(groups: string[] = []): string {
  const email = `sso-${randomId(6)}@example.com`;
  idp.setUser({ sub: `sub-${randomId(6)}`, email, groups });
  return email;
}

/** The authorization URL the CLI printed (on its own indented line). */
const AUTHORIZE_URL = /^ {2}(http:\/\/127\.0\.0\.1:\d+\/authorize\?\S+)$/m;

/** What the user's browser does: open the URL at the issuer, follow its redirect to the CLI. */
async function playBrowser(authorizationUrl: string): Promise<Response> {
  const redirected = await fetch(authorizationUrl, { redirect: "manual" });
  expect(redirected.status).toBe(302);
  const location = redirected.headers.get("location")!;
  expect(location).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/callback\?code=/);
  return fetch(location);
}

/** Runs the browser flow to the end and returns the CLI's result. */
async function browserLogin(env: Record<string, string>, extra: string[] = []): Promise<Result> {
  const login = start(["login", "--server", cp.httpUrl, "--sso", "--no-browser", ...extra], { env });
  const [, url] = await login.waitFor(AUTHORIZE_URL);
  const page = await playBrowser(url!);
  expect(page.status).toBe(200);
  return login.done;
}

/** Resolves when nothing listens at `url` any more. */
async function expectClosed(url: string): Promise<void> {
  await expect(fetch(url, { signal: AbortSignal.timeout(2000) })).rejects.toThrow();
}

describe("moat login --sso (browser)", () => {
  it("runs the authorization code flow with PKCE and stores the access token like a password login", async () => {
    const email = newIdpUser(["eng-all", "unmapped"]);
    const env = freshConfig();
    const login = start(["login", "--server", cp.httpUrl, "--sso", "--no-browser"], { env });
    const [, url] = await login.waitFor(AUTHORIZE_URL);
    const authorize = new URL(url!);
    const params = Object.fromEntries(authorize.searchParams);
    expect(`${authorize.origin}${authorize.pathname}`).toBe(`${idp.issuer}/authorize`);
    expect(params).toMatchObject({
      response_type: "code",
      client_id: "moat-cli",
      redirect_uri: expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+\/callback$/),
      code_challenge_method: "S256",
      code_challenge: expect.stringMatching(/^[\w-]{43}$/),
      state: expect.stringMatching(/^[\w-]{43}$/),
      nonce: expect.stringMatching(/^[\w-]{43}$/),
    });
    expect(params.scope!.split(" ")).toContain("openid");

    const page = await playBrowser(url!);
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toContain("text/html");
    expect(await page.text()).toContain("You can close this tab");

    const result = await login.done;
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain(`Logged in to ${cp.httpUrl} as ${email} (role member) with single sign-on.`);
    expect(result.stdout).toMatch(/The access token is saved in .+ \(mode 0600\); it expires at .+ \(in 1[45]m\)/);
    expect(result.requests).toEqual([
      "GET /api/v1/auth/oidc",
      "POST issuer:/token",
      "POST /api/v1/auth/oidc/token",
      "GET /api/v1/whoami",
    ]);

    const stored = storedConfig(env);
    expect(stored).toEqual({
      server: cp.httpUrl,
      accessToken: expect.stringMatching(JWT),
      accessTokenId: expect.any(String),
      accessTokenExpiresAt: expect.any(String),
      email,
      loginMethod: "sso",
    });
    expect(statSync(env.MOAT_CONFIG!).mode & 0o777).toBe(0o600);
    expect(result.stdout + result.stderr).not.toContain(stored.accessToken!);
    // Only mapped groups count.
    expect(claimsOf(stored.accessToken!)).toMatchObject({ sub: email, kind: "user", groups: ["engineers"] });
    // One callback only: the server is gone once the login is over.
    await expectClosed(params.redirect_uri!);
  });

  it("the stored token works: whoami and status show single sign-on, and groups are mapped", async () => {
    const email = newIdpUser(["sre-oncall", "eng-all"]);
    const env = freshConfig();
    expect((await browserLogin(env)).code).toBe(0);
    const tokenId = storedConfig(env).accessTokenId!;

    const whoami = await moat(["whoami"], { env });
    expect(whoami.code, whoami.stderr).toBe(0);
    expect(whoami.stdout).toMatch(new RegExp(`^User: +${email}$`, "m"));
    expect(whoami.stdout).toMatch(/^Groups: +engineers, oncall$/m);
    expect(whoami.stdout).toMatch(
      new RegExp(`^Auth: +access token ${tokenId} \\(single sign-on\\), expires .+\\(in`, "m"),
    );

    const status = parseJson((await moat(["status", "--json"], { env })).stdout);
    expect(status).toMatchObject({ auth: { method: "access-token", tokenId, loginMethod: "sso" } });
    expect((await moat(["status"], { env })).stdout).toMatch(/^Auth: +access token \S+ \(single sign-on\), expires /m);

    const tokens = parseJson<{ items: { id: string; source: string }[] }>(
      (await moat(["tokens", "list", "--json"], { env })).stdout,
    );
    expect(tokens.items).toContainEqual(expect.objectContaining({ id: tokenId, source: "oidc" }));
  });

  it("an expired session hints at --sso; plain `moat login` repeats single sign-on and opens the browser", async () => {
    const email = newIdpUser();
    const env = freshConfig();
    expect((await browserLogin(env)).code).toBe(0);
    const later = new Date(Date.now() + 3600_000);
    const expired = await moat(["whoami"], { env, now: () => later });
    expect(expired.code).toBe(3);
    expect(expired.stderr).toContain(`hint: \`moat login --server ${cp.httpUrl} --sso\``);

    const opened: string[] = [];
    const again = start(["login"], { env, openBrowser: (url) => opened.push(url) });
    await again.waitFor(/if it does not open/);
    expect(opened).toHaveLength(1);
    expect((await playBrowser(opened[0]!)).status).toBe(200);
    const result = await again.done;
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain(`as ${email} (role member) with single sign-on.`);
    expect(result.stdout).toContain(opened[0]!);
  });

  it("refuses a callback with another state (exit 3) and stores nothing", async () => {
    newIdpUser();
    const env = freshConfig();
    const login = start(["login", "--server", cp.httpUrl, "--sso", "--no-browser"], { env });
    const [, url] = await login.waitFor(AUTHORIZE_URL);
    const redirectUri = new URL(url!).searchParams.get("redirect_uri")!;
    const forged = await fetch(`${redirectUri}?code=attacker-code&state=not-this-login`);
    expect(forged.status).toBe(400);
    expect(await forged.text()).toContain("sign-in failed");

    const result = await login.done;
    expect(result.code).toBe(3);
    expect(result.stderr).toContain("moat: the browser came back with the state of another login");
    expect(result.stderr).toContain("(sso_failed)");
    // Neither the issuer nor the control plane was asked to redeem anything.
    expect(result.requests).toEqual(["GET /api/v1/auth/oidc"]);
    expect(() => readFileSync(env.MOAT_CONFIG!)).toThrow();
    await expectClosed(redirectUri);
  });

  it("refuses the issuer's error=access_denied (exit 3), with its description", async () => {
    const env = freshConfig();
    const login = start(["--json", "login", "--server", cp.httpUrl, "--sso", "--no-browser"], { env });
    // Under --json the instructions go to stderr, so stdout stays one JSON document (here: none).
    const [, url] = await login.waitFor(AUTHORIZE_URL);
    const params = new URL(url!).searchParams;
    const denied = await fetch(
      `${params.get("redirect_uri")}?error=access_denied&error_description=${encodeURIComponent("The user said no")}&state=${params.get("state")}`,
    );
    expect(denied.status).toBe(400);
    const result = await login.done;
    expect(result.code).toBe(3);
    expect(result.stdout).toBe("");
    expect(parseJson(result.stderr.trim().split("\n").pop()!)).toMatchObject({
      code: "sso_failed",
      detail: "the identity provider denied the login: access_denied (The user said no)",
    });
  });

  it("reports the issuer refusing the code (exit 3)", async () => {
    const env = freshConfig();
    const login = start(["login", "--server", cp.httpUrl, "--sso", "--no-browser"], { env });
    const [, url] = await login.waitFor(AUTHORIZE_URL);
    const params = new URL(url!).searchParams;
    expect((await fetch(`${params.get("redirect_uri")}?code=made-up&state=${params.get("state")}`)).status).toBe(200);
    const result = await login.done;
    expect(result.code).toBe(3);
    expect(result.stderr).toContain(
      "moat: the identity provider refused to redeem the authorization code: invalid_grant (sso_failed)",
    );
    expect(() => readFileSync(env.MOAT_CONFIG!)).toThrow();
  });

  it("gives up after MOAT_SSO_TIMEOUT_SECONDS without the browser (exit 3) and closes the callback server", async () => {
    const env = { ...freshConfig(), MOAT_SSO_TIMEOUT_SECONDS: "1" };
    const login = start(["login", "--server", cp.httpUrl, "--sso", "--no-browser"], { env });
    const [, url] = await login.waitFor(AUTHORIZE_URL);
    const result = await login.done;
    expect(result.code).toBe(3);
    expect(result.stderr).toContain("moat: no answer from the browser within 1s (sso_failed)");
    await expectClosed(new URL(url!).searchParams.get("redirect_uri")!);

    const bad = await moat(["login", "--server", cp.httpUrl, "--sso"], {
      env: { ...freshConfig(), MOAT_SSO_TIMEOUT_SECONDS: "soon" },
    });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("MOAT_SSO_TIMEOUT_SECONDS must be a positive number of seconds");
  });

  it("a disabled user is refused by the control plane (exit 4) and nothing is stored", async () => {
    const email = newIdpUser();
    expect((await browserLogin(freshConfig())).code).toBe(0);
    const disable = await moat(["users", "disable", email], { env: admin });
    expect(disable.code, disable.stderr).toBe(0);

    const env = freshConfig();
    const result = await browserLogin(env);
    expect(result.code).toBe(4);
    expect(result.stderr).toContain("moat: this account is disabled (permission_denied)");
    expect(result.stderr).not.toContain("hint");
    expect(() => readFileSync(env.MOAT_CONFIG!)).toThrow();
  });

  it("says so when single sign-on is not configured (exit 5)", async () => {
    const result = await moat(["login", "--server", plain.httpUrl, "--sso", "--no-browser"], { env: freshConfig() });
    expect(result.code).toBe(5);
    expect(result.stderr).toContain("moat: single sign-on is not configured on this control plane (not_found)");
    expect(result.stderr).toContain("hint: log in with --email");
    const json = await moat(["--json", "login", "--server", plain.httpUrl, "--device"], { env: freshConfig() });
    expect(json.code).toBe(5);
    expect(parseJson(json.stderr)).toMatchObject({ status: 404, code: "not_found" });
  });

  it("usage errors: --sso, --device or --no-browser with --email, --api-key or --password-stdin", async () => {
    for (const extra of [
      ["--sso", "--email", "a@example.com"],
      ["--device", "--api-key", "moat_ak_x_y"],
      ["--no-browser", "--password-stdin"],
    ]) {
      const result = await moat(["login", "--server", cp.httpUrl, ...extra], { env: freshConfig() });
      expect(result.code, extra.join(" ")).toBe(2);
      expect(result.stderr).toContain("is a way to log in of its own");
      expect(result.requests).toEqual([]);
    }
  });
});

describe("moat login --sso --device", () => {
  it("shows the code, polls until it is approved, and stores the token", async () => {
    const email = newIdpUser(["eng-all"]);
    const env = freshConfig();
    const login = start(["login", "--server", cp.httpUrl, "--sso", "--device"], { env });
    const [, userCode] = await login.waitFor(/enter the code (\S+)\)/);
    idp.approveDevice(userCode!);
    const result = await login.done;
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain(`${idp.issuer}/activate?user_code=${userCode}`);
    expect(result.stdout).toContain(`Logged in to ${cp.httpUrl} as ${email} (role member) with single sign-on.`);
    expect(result.requests[0]).toBe("GET /api/v1/auth/oidc");
    expect(result.requests[1]).toBe("POST issuer:/device");
    expect(result.requests.filter((r) => r === "POST issuer:/token").length).toBeGreaterThanOrEqual(1);
    expect(result.requests.slice(-2)).toEqual(["POST /api/v1/auth/oidc/token", "GET /api/v1/whoami"]);
    expect(storedConfig(env)).toMatchObject({ email, loginMethod: "sso", accessToken: expect.stringMatching(JWT) });

    const whoami = await moat(["whoami", "--json"], { env });
    expect(parseJson(whoami.stdout)).toMatchObject({ email, groups: ["engineers"] });
  });

  it("--json prints the result only (instructions on stderr)", async () => {
    const email = newIdpUser();
    const env = freshConfig();
    const login = start(["--json", "login", "--server", cp.httpUrl, "--device"], { env });
    const [, userCode] = await login.waitFor(/enter the code (\S+)\)/);
    idp.approveDevice(userCode!);
    const result = await login.done;
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toContain(userCode!);
    expect(parseJson(result.stdout)).toMatchObject({
      server: cp.httpUrl,
      credential: "access-token",
      loginMethod: "sso",
      expiresAt: expect.any(String),
      user: { email, role: "member", tokenId: expect.any(String) },
    });
    expect(result.stdout).not.toContain(storedConfig(env).accessToken!);
  });

  it("gives up when the login is not approved in time (exit 3)", async () => {
    newIdpUser();
    const result = await moat(["login", "--server", cp.httpUrl, "--device"], {
      env: { ...freshConfig(), MOAT_SSO_TIMEOUT_SECONDS: "1" },
    });
    expect(result.code).toBe(3);
    expect(result.stderr).toContain("moat: the login was not approved within 1s (sso_failed)");
  });
});

describe("device flow polling", () => {
  const config: OidcConfig = {
    issuer: "https://idp.test",
    clientId: "moat-cli",
    scopes: ["openid", "email"],
    authorizationEndpoint: "https://idp.test/authorize",
    tokenEndpoint: "https://idp.test/token",
    deviceAuthorizationEndpoint: "https://idp.test/device",
  };

  /** A fake issuer: the device endpoint, then the given token endpoint answers in turn. */
  function fakeIssuer(answers: { status: number; body: unknown }[]) {
    const polls: URLSearchParams[] = [];
    const fetchFake = (async (input: string | URL | Request, init?: RequestInit) => {
      const url = String(input);
      const reply = (status: number, body: unknown) =>
        new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
      if (url.endsWith("/device"))
        return reply(200, {
          device_code: "dc",
          user_code: "ABCD-EFGH",
          verification_uri: "https://idp.test/activate",
          expires_in: 600,
          interval: 2,
        });
      polls.push(new URLSearchParams(String(init?.body)));
      const answer = answers.shift() ?? { status: 400, body: { error: "authorization_pending" } };
      return reply(answer.status, answer.body);
    }) as typeof fetch;
    return { fetch: fetchFake, polls };
  }

  function flow(answers: { status: number; body: unknown }[]) {
    const issuer = fakeIssuer(answers);
    const sleeps: number[] = [];
    let stdout = "";
    const out = createOutput({
      stdout: { write: (s: string) => (stdout += s) },
      stderr: { write: () => true },
      json: false,
    });
    const result = deviceFlow({
      out,
      config,
      requestTimeoutMs: 1000,
      waitTimeoutMs: 300_000,
      fetch: issuer.fetch,
      sleep: async (ms) => void sleeps.push(ms),
    });
    return { result, sleeps, polls: issuer.polls, stdout: () => stdout };
  }

  it("waits the interval, 5 s more after each slow_down, and returns the ID token", async () => {
    const run = flow([
      { status: 400, body: { error: "authorization_pending" } },
      { status: 400, body: { error: "slow_down" } },
      { status: 400, body: { error: "authorization_pending" } },
      { status: 400, body: { error: "slow_down" } },
      { status: 200, body: { token_type: "Bearer", id_token: "eyJ.id.token" } },
    ]);
    expect(await run.result).toEqual({ idToken: "eyJ.id.token" });
    expect(run.sleeps).toEqual([2000, 2000, 7000, 7000, 12000]);
    expect(run.polls[0]?.get("grant_type")).toBe("urn:ietf:params:oauth:grant-type:device_code");
    expect(run.polls[0]?.get("device_code")).toBe("dc");
    expect(run.polls[0]?.get("client_id")).toBe("moat-cli");
    // Without a complete URI: the URI and the code on a line of its own.
    expect(run.stdout()).toContain("open https://idp.test/activate on any device and enter the code:\n\n  ABCD-EFGH");
  });

  it("stops on access_denied, expired_token and other errors, as sso_failed", async () => {
    const cases: [unknown, string][] = [
      [{ error: "access_denied" }, "the login was denied at the identity provider"],
      [{ error: "expired_token" }, "the device code expired before the login was approved"],
      [
        { error: "invalid_client", error_description: "unknown\u001b[31m client" },
        "the identity provider refused the device login: invalid_client (unknown?[31m client)",
      ],
    ];
    for (const [body, message] of cases) {
      const error = await flow([{ status: 400, body }]).result.catch((e: unknown) => e);
      expect(error).toBeInstanceOf(CliError);
      expect(error).toMatchObject({ code: "sso_failed", exitCode: 3, message });
    }
  });

  it("a token answer without an ID token is refused", async () => {
    const error = await flow([{ status: 200, body: { access_token: "x" } }]).result.catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "sso_failed", message: "the identity provider returned no ID token" });
  });
});
