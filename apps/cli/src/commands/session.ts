/**
 * `moat login` and `moat logout`. People log in with their email and password, or with single
 * sign-on (`--sso`: the identity provider's ID token exchanged at the control plane): either way the
 * control plane returns a short-lived access token, which is stored with its expiry. Automation logs
 * in with an API key, verified before it is stored. Each replaces the others in the config file;
 * `logout` removes it (revoking an access token first). Passwords, keys and tokens are never printed.
 */
import type { Command } from "commander";
import type { AccessToken, ApiClient, ClientAuth, OidcConfig, Whoami } from "../api-client.js";
import type { CommandContext } from "../context.js";
import {
  isExpired,
  normalizeServer,
  readConfig,
  withoutCredential,
  writeConfig,
  type LoginMethod,
  type StoredConfig,
} from "../credentials.js";
import { CliError, CliErrorCode } from "../errors.js";
import { promptSecret, readLine, readPassword, type CliIo } from "../io.js";
import { checkOidcConfig } from "../oidc-client.js";
import { clean, relativeTime, type Output } from "../output.js";
import {
  browserFlow,
  DEFAULT_SSO_TIMEOUT_SECONDS,
  deviceFlow,
  openBrowser,
  ssoTimeoutMs,
  type IdTokenGrant,
} from "../sso.js";

/** What `--json` prints after a login. */
export interface LoginResult {
  server: string;
  configPath: string;
  /** What was stored: the API key, or the access token of a password or single sign-on login. */
  credential: "api-key" | "access-token";
  /** How the access token was obtained (access tokens only). */
  loginMethod?: LoginMethod;
  /** When the stored access token expires (access tokens only). */
  expiresAt?: string;
  user: Whoami;
}

/** Options of `moat login`. */
export interface LoginOptions {
  server?: string;
  apiKey?: string;
  email?: string;
  passwordStdin?: boolean;
  /** Single sign-on through the control plane's OpenID Connect issuer. */
  sso?: boolean;
  /** Single sign-on with the device flow (implies `sso`). */
  device?: boolean;
  /** `--no-browser` sets it to false: print the URL only (implies `sso`). */
  browser?: boolean;
}

/** How `moat login --sso` runs the identity provider's part. */
export interface SsoFlow {
  device: boolean;
  /** Try to open the browser (the URL is printed either way). */
  browser: boolean;
}

const API_KEY_SHAPE = /^moat_ak_[a-z0-9]+_[A-Za-z0-9_-]+$/;

function isLoopback(hostname: string): boolean {
  return hostname === "localhost" || hostname === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(hostname);
}

/** The `sub` claim of a Moat access token (the user's email), read without verifying it. */
function subjectOf(accessToken: string): string | undefined {
  try {
    const claims: unknown = JSON.parse(Buffer.from(accessToken.split(".")[1] ?? "", "base64url").toString("utf8"));
    const sub = (claims as { sub?: unknown } | null)?.sub;
    return typeof sub === "string" && sub ? sub : undefined;
  } catch {
    return undefined;
  }
}

/** Login and logout over narrow dependencies (no commander, no global state). */
export function createSessionCommands(deps: {
  io: Pick<CliIo, "stdin" | "stderr" | "env">;
  out: Output;
  configPath: string;
  client: (
    server: string,
    auth?: ClientAuth,
  ) => Pick<ApiClient, "whoami" | "login" | "revokeToken" | "oidcConfig" | "oidcLogin">;
  /** Runs the identity provider's part of single sign-on and returns its ID token. */
  signIn: (config: OidcConfig, flow: SsoFlow) => Promise<IdTokenGrant>;
}) {
  const { io, out, configPath } = deps;

  async function readApiKey(flagKey: string | undefined): Promise<string> {
    if (flagKey) return flagKey;
    if (io.env.MOAT_API_KEY) return io.env.MOAT_API_KEY;
    if (io.stdin.isTTY) return promptSecret(io, "API key: ");
    return (await readLine(io.stdin)) ?? "";
  }

  async function readLoginPassword(email: string, fromStdin: boolean): Promise<string> {
    if (fromStdin) return readPassword(io, { prompt: `Password for ${clean(email)}: ` });
    if (io.env.MOAT_PASSWORD) return io.env.MOAT_PASSWORD;
    if (io.stdin.isTTY) return readPassword(io, { prompt: `Password for ${clean(email)}: ` });
    throw new CliError(
      CliErrorCode.usage,
      "no password given: pipe it with --password-stdin, set MOAT_PASSWORD, or run on a terminal",
    );
  }

  function readStored(): StoredConfig {
    try {
      return readConfig(configPath);
    } catch (error) {
      // Logging in is how a broken config gets repaired, so it must not be blocked by one.
      out.note(`warning: ${(error as Error).message}; it will be replaced`);
      return {};
    }
  }

  function warnIfPlainHttp(server: string, what: string): void {
    const url = new URL(server);
    if (url.protocol === "http:" && !isLoopback(url.hostname))
      out.note(`warning: ${server} is plain http: ${what} unencrypted; prefer https://`);
  }

  async function keyLogin(server: string, stored: StoredConfig, flagKey: string | undefined): Promise<LoginResult> {
    const apiKey = (await readApiKey(flagKey)).trim();
    if (!apiKey) {
      throw new CliError(
        CliErrorCode.usage,
        "no API key given: pipe it on stdin, set MOAT_API_KEY, or pass --api-key (or log in with --email)",
      );
    }
    if (!API_KEY_SHAPE.test(apiKey)) {
      // Checked locally so a mistyped value (or a different secret) is never sent anywhere.
      throw new CliError("unauthenticated", "that is not a Moat API key (they look like moat_ak_<id>_<secret>)");
    }
    warnIfPlainHttp(server, "the API key travels");
    const user = await deps.client(server, { apiKey }).whoami();
    writeConfig(configPath, { ...withoutCredential(stored), server, apiKey });
    const result: LoginResult = { server, configPath, credential: "api-key", user };
    if (out.json) out.data(result);
    else {
      out.text(`Logged in to ${server} as ${clean(user.email)} (role ${clean(user.role)}).`);
      out.text(`The API key is saved in ${configPath} (mode 0600).`);
    }
    return result;
  }

  async function passwordLogin(
    server: string,
    stored: StoredConfig,
    email: string,
    passwordStdin: boolean,
  ): Promise<LoginResult> {
    const password = await readLoginPassword(email, passwordStdin);
    warnIfPlainHttp(server, "your password and access token travel");
    const token = await deps.client(server).login(email, password);
    const user = await deps.client(server, { accessToken: token.accessToken, email }).whoami();
    return saveAccessToken(server, stored, token, user, { method: "password", email: user.email });
  }

  /**
   * Single sign-on: the issuer's endpoints from the control plane, the identity provider's login
   * (browser or device), then its ID token exchanged for a Moat access token, stored like a
   * password login's (with `loginMethod: "sso"`, so `moat login` repeats single sign-on).
   */
  async function ssoLogin(server: string, stored: StoredConfig, flow: SsoFlow): Promise<LoginResult> {
    warnIfPlainHttp(server, "your access token travels");
    const client = deps.client(server);
    let config: OidcConfig;
    try {
      config = checkOidcConfig(await client.oidcConfig());
    } catch (error) {
      if (error instanceof CliError && error.code === "not_found") {
        throw new CliError("not_found", "single sign-on is not configured on this control plane", {
          hint: "log in with --email (a password) or an API key, or ask an admin to set up oidc (docs/identity.md)",
          ...(error.problem ? { problem: error.problem } : {}),
          cause: error,
        });
      }
      throw error;
    }
    warnIfPlainHttp(new URL(config.tokenEndpoint).origin, "the login's code travels to the identity provider");
    const grant = await deps.signIn(config, flow);
    const token = await client.oidcLogin(grant.idToken, grant.nonce);
    const email = subjectOf(token.accessToken);
    const user = await deps
      .client(server, { accessToken: token.accessToken, ...(email ? { email } : {}), sso: true })
      .whoami();
    return saveAccessToken(server, stored, token, user, { method: "sso", email: email ?? user.email });
  }

  /** Stores the access token of a password or single sign-on login, replacing any other credential. */
  function saveAccessToken(
    server: string,
    stored: StoredConfig,
    token: AccessToken,
    user: Whoami,
    login: { method: LoginMethod; email: string },
  ): LoginResult {
    writeConfig(configPath, {
      ...withoutCredential(stored),
      server,
      accessToken: token.accessToken,
      accessTokenId: token.tokenId,
      accessTokenExpiresAt: token.expiresAt,
      email: login.email,
      // A password login is recorded by the absence of the key, as before single sign-on existed.
      ...(login.method === "sso" ? { loginMethod: "sso" } : {}),
    });
    const result: LoginResult = {
      server,
      configPath,
      credential: "access-token",
      loginMethod: login.method,
      expiresAt: token.expiresAt,
      user,
    };
    if (out.json) out.data(result);
    else {
      const how = login.method === "sso" ? " with single sign-on" : "";
      out.text(`Logged in to ${server} as ${clean(user.email)} (role ${clean(user.role)})${how}.`);
      out.text(
        `The access token is saved in ${configPath} (mode 0600); it expires at ${clean(token.expiresAt)} ` +
          `(${relativeTime(token.expiresAt, out.now())}), then run \`moat login\` again.`,
      );
    }
    if (io.env.MOAT_API_KEY)
      out.note("note: MOAT_API_KEY is set in this environment and is used instead of the stored token.");
    return result;
  }

  /** Revokes a stored access token on logout; a failure is reported, never fatal (the file is cleaned anyway). */
  async function revokeStoredToken(stored: StoredConfig): Promise<boolean> {
    const { server, accessToken, accessTokenId, accessTokenExpiresAt } = stored;
    if (!server || !accessToken || !accessTokenId) return false;
    if (isExpired({ expiresAt: accessTokenExpiresAt ?? "" }, out.now())) return false;
    try {
      await deps.client(normalizeServer(server), { accessToken }).revokeToken(accessTokenId);
      return true;
    } catch (error) {
      out.note(
        `warning: the access token could not be revoked (${(error as Error).message}); ` +
          `it stays valid until ${clean(accessTokenExpiresAt ?? null)}`,
      );
      return false;
    }
  }

  return {
    /**
     * Single sign-on with `--sso` (or `--device`, `--no-browser`); password login with `--email`.
     * When none of these nor an API key is given, the last login to this server is repeated: single
     * sign-on, or a password login with its email. Otherwise API-key login, as before.
     */
    async login(options: LoginOptions): Promise<LoginResult> {
      const ssoGiven = options.sso === true || options.device === true || options.browser === false;
      if (ssoGiven && (options.email !== undefined || options.apiKey !== undefined || options.passwordStdin))
        throw new CliError(
          CliErrorCode.usage,
          "--sso (like --device and --no-browser) is a way to log in of its own: do not combine it with --email, --api-key or --password-stdin",
        );
      if (options.email !== undefined && options.apiKey !== undefined)
        throw new CliError(CliErrorCode.usage, "--email and --api-key are two ways to log in: pass one of them");
      const stored = readStored();
      const rawServer = options.server ?? (io.env.MOAT_SERVER || undefined) ?? stored.server;
      if (!rawServer) {
        throw new CliError(
          CliErrorCode.usage,
          "which control plane? pass --server URL (e.g. --server http://127.0.0.1:7070)",
        );
      }
      const server = normalizeServer(rawServer);
      const sameServer = stored.server !== undefined && normalizeServer(stored.server) === server;
      const keyGiven = options.apiKey !== undefined || Boolean(io.env.MOAT_API_KEY);
      const repeatSso =
        sameServer &&
        stored.loginMethod === "sso" &&
        !keyGiven &&
        options.email === undefined &&
        !options.passwordStdin;
      if (ssoGiven || repeatSso)
        return ssoLogin(server, stored, { device: options.device === true, browser: options.browser !== false });
      const email = options.email ?? (!keyGiven && sameServer ? stored.email : undefined);
      if (email !== undefined) {
        if (!email.trim()) throw new CliError(CliErrorCode.usage, "--email needs an email address");
        return passwordLogin(server, stored, email.trim(), options.passwordStdin === true);
      }
      if (options.passwordStdin)
        throw new CliError(CliErrorCode.usage, "--password-stdin needs --email EMAIL (whose password it is)");
      return keyLogin(server, stored, options.apiKey);
    },

    async logout(): Promise<void> {
      const stored = readConfig(configPath);
      if (!stored.apiKey && !stored.accessToken) {
        if (out.json) out.data({ loggedOut: false, configPath });
        else out.text(`Not logged in: ${configPath} holds no API key or access token.`);
      } else if (stored.apiKey) {
        // The server is kept, so a later `moat login` needs no --server.
        writeConfig(configPath, withoutCredential(stored));
        if (out.json) out.data({ loggedOut: true, server: stored.server ?? null, configPath });
        else {
          out.text(
            `Logged out${stored.server ? ` of ${stored.server}` : ""}: the API key was removed from ${configPath}.`,
          );
          out.text("The key itself stays valid on the control plane; if it may have leaked, have an admin revoke it.");
        }
      } else {
        const revoked = await revokeStoredToken(stored);
        writeConfig(configPath, withoutCredential(stored));
        if (out.json) out.data({ loggedOut: true, server: stored.server ?? null, configPath, revoked });
        else
          out.text(
            `Logged out${stored.server ? ` of ${stored.server}` : ""}: the access token was ` +
              `${revoked ? "revoked and " : ""}removed from ${configPath}.`,
          );
      }
      if (io.env.MOAT_API_KEY)
        out.note("note: MOAT_API_KEY is still set in this environment and is used by every command.");
    },
  };
}

/** Adds `login` and `logout` to the program. */
export function registerSessionCommands(program: Command, context: CommandContext): void {
  const commands = (command: Command) => {
    const out = context.output(command);
    return createSessionCommands({
      io: context.io,
      out,
      configPath: context.configPath(),
      client: (server, auth) => context.client(server, auth, command),
      signIn: (config, flow) => {
        const base = {
          out,
          config,
          requestTimeoutMs: context.globals(command).timeout,
          waitTimeoutMs: ssoTimeoutMs(context.io.env),
          ...(context.io.fetch ? { fetch: context.io.fetch } : {}),
        };
        if (flow.device) return deviceFlow(base);
        return browserFlow(flow.browser ? { ...base, openBrowser: context.io.openBrowser ?? openBrowser } : base);
      },
    });
  };

  program
    .command("login")
    .description("log in with single sign-on (--sso), your password (--email) or an API key, and save the credential")
    .option("--sso", "log in with single sign-on, in a browser on this machine")
    .option("--device", "single sign-on with a code entered on any device (for machines without a browser)")
    .option("--no-browser", "single sign-on: print the URL to open instead of opening a browser")
    .option("--email <email>", "log in as this person with a password (prompted, or see --password-stdin)")
    .option("--password-stdin", "read the password from stdin (else MOAT_PASSWORD, else a prompt on a terminal)")
    .option("--api-key <key>", "the API key (visible in `ps` and shell history: prefer stdin or MOAT_API_KEY)")
    .addHelpText(
      "after",
      "\nPeople log in with single sign-on or a password; automation uses API keys (or MOAT_API_KEY without\n" +
        "logging in). Without --sso, --email or an API key, `moat login` repeats your last login to the\n" +
        "server: single sign-on, or a password login with the same email. Single sign-on waits up to\n" +
        `${DEFAULT_SSO_TIMEOUT_SECONDS / 60} minutes for the browser (MOAT_SSO_TIMEOUT_SECONDS changes it).\n\n` +
        "Examples:\n" +
        "  moat login --server https://moat.example.com --sso                      # opens your browser\n" +
        "  moat login --server https://moat.example.com --sso --device             # on a remote machine\n" +
        "  moat login --server https://moat.example.com --email dana@example.com   # prompts for the password\n" +
        '  printf "%s\\n" "$PASSWORD" | moat login --email dana@example.com --password-stdin\n' +
        "  moat login --server https://moat.example.com        # prompts for an API key\n" +
        '  echo "$KEY" | moat login --server http://127.0.0.1:7070',
    )
    .action(async (options: Omit<LoginOptions, "server">, command: Command) => {
      const globals = context.globals(command);
      await commands(command).login({ ...options, ...(globals.server ? { server: globals.server } : {}) });
    });

  program
    .command("logout")
    .description("remove the stored API key or access token, revoking the token (the server URL is kept)")
    .action(async (_options: unknown, command: Command) => {
      await commands(command).logout();
    });
}
