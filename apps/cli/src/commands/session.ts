/**
 * `moat login` and `moat logout`. People log in with their email and password: the control plane
 * returns a short-lived access token, which is stored with its expiry. Automation logs in with an
 * API key, verified before it is stored. Either replaces the other in the config file; `logout`
 * removes it (revoking an access token first). Passwords, keys and tokens are never printed.
 */
import type { Command } from "commander";
import type { ApiClient, ClientAuth, Whoami } from "../api-client.js";
import type { CommandContext } from "../context.js";
import {
  isExpired,
  normalizeServer,
  readConfig,
  withoutCredential,
  writeConfig,
  type StoredConfig,
} from "../credentials.js";
import { CliError, CliErrorCode } from "../errors.js";
import { promptSecret, readLine, readPassword, type CliIo } from "../io.js";
import { clean, relativeTime, type Output } from "../output.js";

/** What `--json` prints after a login. */
export interface LoginResult {
  server: string;
  configPath: string;
  /** What was stored: the API key, or the access token of a password login. */
  credential: "api-key" | "access-token";
  /** When the stored access token expires (password login only). */
  expiresAt?: string;
  user: Whoami;
}

/** Options of `moat login`. */
export interface LoginOptions {
  server?: string;
  apiKey?: string;
  email?: string;
  passwordStdin?: boolean;
}

const API_KEY_SHAPE = /^moat_ak_[a-z0-9]+_[A-Za-z0-9_-]+$/;

function isLoopback(hostname: string): boolean {
  return hostname === "localhost" || hostname === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(hostname);
}

/** Login and logout over narrow dependencies (no commander, no global state). */
export function createSessionCommands(deps: {
  io: Pick<CliIo, "stdin" | "stderr" | "env">;
  out: Output;
  configPath: string;
  client: (server: string, auth?: ClientAuth) => Pick<ApiClient, "whoami" | "login" | "revokeToken">;
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
    writeConfig(configPath, {
      ...withoutCredential(stored),
      server,
      accessToken: token.accessToken,
      accessTokenId: token.tokenId,
      accessTokenExpiresAt: token.expiresAt,
      email: user.email,
    });
    const result: LoginResult = { server, configPath, credential: "access-token", expiresAt: token.expiresAt, user };
    if (out.json) out.data(result);
    else {
      out.text(`Logged in to ${server} as ${clean(user.email)} (role ${clean(user.role)}).`);
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
     * Password login with `--email` (or, when neither an API key nor an email is given, with the
     * email of the last password login to this server); otherwise API-key login, as before.
     */
    async login(options: LoginOptions): Promise<LoginResult> {
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
  const commands = (command: Command) =>
    createSessionCommands({
      io: context.io,
      out: context.output(command),
      configPath: context.configPath(),
      client: (server, auth) => context.client(server, auth, command),
    });

  program
    .command("login")
    .description("log in with your password (--email) or an API key, and save the credential")
    .option("--email <email>", "log in as this person with a password (prompted, or see --password-stdin)")
    .option("--password-stdin", "read the password from stdin (else MOAT_PASSWORD, else a prompt on a terminal)")
    .option("--api-key <key>", "the API key (visible in `ps` and shell history: prefer stdin or MOAT_API_KEY)")
    .addHelpText(
      "after",
      "\nPeople log in with a password; automation uses API keys (or MOAT_API_KEY without logging in).\n" +
        "Without --email or an API key, `moat login` uses the email of your last password login.\n\n" +
        "Examples:\n" +
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
