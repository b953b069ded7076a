/**
 * Where the CLI keeps its server URL and credential (an API key, or the access token of a password
 * or single sign-on login), and how flags and environment override them.
 * Owns the config file: its location (`$MOAT_CONFIG`, XDG, ~/.config), its format, and writing it
 * atomically with mode 0600 in a 0700 directory. It does not talk to the network or print anything.
 */
import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { CliError, CliErrorCode } from "./errors.js";

/**
 * The config file's content. Unknown keys are kept when the CLI rewrites the file. It holds at most
 * one credential: `apiKey`, or the access token of a login with its id, expiry, email and (for single
 * sign-on) how it was obtained.
 */
export interface StoredConfig {
  server?: string;
  apiKey?: string;
  accessToken?: string;
  accessTokenId?: string;
  /** ISO date-time; the token is not sent after it. */
  accessTokenExpiresAt?: string;
  /** Who logged in: `moat login` offers it again. */
  email?: string;
  /** "sso" after a single sign-on login (`moat login` then repeats it); absent after a password login. */
  loginMethod?: string;
  [key: string]: unknown;
}

/** How a stored access token was obtained. */
export type LoginMethod = "password" | "sso";

/** The config keys of a credential, removed together when another login or a logout replaces it. */
export const CREDENTIAL_KEYS = [
  "apiKey",
  "accessToken",
  "accessTokenId",
  "accessTokenExpiresAt",
  "email",
  "loginMethod",
] as const;

/** `config` without its credential (server and unknown keys are kept). */
export function withoutCredential(config: StoredConfig): StoredConfig {
  const rest: StoredConfig = { ...config };
  for (const key of CREDENTIAL_KEYS) delete rest[key];
  return rest;
}

type Env = Record<string, string | undefined>;

/** The config file path: `$MOAT_CONFIG`, else `$XDG_CONFIG_HOME/moat/config.json`, else `~/.config/moat/config.json`. */
export function configPath(env: Env, home: string = env.HOME || homedir()): string {
  if (env.MOAT_CONFIG) return env.MOAT_CONFIG;
  if (env.XDG_CONFIG_HOME) return join(env.XDG_CONFIG_HOME, "moat", "config.json");
  return join(home, ".config", "moat", "config.json");
}

/** Reads the config file; a missing file is an empty config, a corrupt one an error naming the file. */
export function readConfig(path: string): StoredConfig {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return {};
    throw new CliError(CliErrorCode.configInvalid, `cannot read the config file ${path}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw invalid(path, "it is not valid JSON");
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed))
    throw invalid(path, "it must be a JSON object");
  const config = parsed as StoredConfig;
  for (const key of ["server", ...CREDENTIAL_KEYS] as const) {
    if (config[key] !== undefined && typeof config[key] !== "string") throw invalid(path, `"${key}" must be a string`);
  }
  return config;
}

function invalid(path: string, why: string): CliError {
  return new CliError(CliErrorCode.configInvalid, `the config file ${path} is invalid: ${why}`, {
    hint: "fix it, or delete it and run `moat login` again",
  });
}

/** True when a config file holding a key can be read by other users (mode & 077). */
export function isExposed(path: string): boolean {
  try {
    return (statSync(path).mode & 0o077) !== 0;
  } catch {
    return false;
  }
}

/**
 * Writes the config atomically (temp file + rename in the same directory), so a crash never leaves
 * a half-written file, and with mode 0600 from the first byte, so the key is never world-readable.
 */
export function writeConfig(path: string, config: StoredConfig): void {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const temp = join(dir, `.config-${process.pid}-${randomBytes(6).toString("hex")}.tmp`);
  try {
    writeFileSync(temp, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600, flag: "wx" });
    // The umask can only remove bits, but an explicit chmod states the intent and survives odd umasks.
    chmodSync(temp, 0o600);
    renameSync(temp, path);
  } catch (error) {
    rmSync(temp, { force: true });
    throw new CliError(
      CliErrorCode.configInvalid,
      `cannot write the config file ${path}: ${(error as Error).message}`,
      { cause: error },
    );
  }
}

/**
 * Normalises a server URL (scheme required, no query or fragment, no trailing slash), so that the
 * same server typed two ways compares equal; throws a usage error for anything else.
 */
export function normalizeServer(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw.trim());
  } catch {
    throw new CliError(CliErrorCode.usage, `"${raw}" is not a URL: use e.g. http://127.0.0.1:7070`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new CliError(CliErrorCode.usage, `the server URL must start with http:// or https:// (got "${raw}")`);
  }
  if (url.username || url.password || url.search || url.hash) {
    throw new CliError(CliErrorCode.usage, "the server URL must not contain credentials, a query or a fragment");
  }
  return url.toString().replace(/\/+$/, "");
}

/** The access token of a password or single sign-on login, as stored. */
export interface StoredAccessToken {
  value: string;
  id?: string;
  expiresAt: string;
  email?: string;
  /** Set for single sign-on only; a token without it came from a password login. */
  loginMethod?: "sso";
}

/** What a command talks to: the server and, when logged in, the key or token (and where it came from). */
export interface Connection {
  server?: string;
  apiKey?: string;
  keySource?: "env" | "config";
  /** Set instead of `apiKey` after a password or single sign-on login (only from the config file). */
  accessToken?: StoredAccessToken;
  /** Set when the config holds a credential for another server than the one chosen (it is not used). */
  storedServer?: string;
}

/**
 * Precedence: `--server`, then `MOAT_SERVER`, then the config file; `MOAT_API_KEY`, then the config
 * file's key or access token. The stored credential is only used with the server it was stored for:
 * pointing `--server` elsewhere must not send your key or token to that other server.
 */
export function resolveConnection(input: { flagServer?: string; env: Env; stored: StoredConfig }): Connection {
  const { env, stored } = input;
  const chosen = input.flagServer ?? (env.MOAT_SERVER || undefined) ?? stored.server;
  const server = chosen === undefined ? undefined : normalizeServer(chosen);
  const storedServer = stored.server === undefined ? undefined : safeNormalize(stored.server);
  const connection: Connection = server ? { server } : {};
  if (env.MOAT_API_KEY) return { ...connection, apiKey: env.MOAT_API_KEY.trim(), keySource: "env" };
  const sameServer = server !== undefined && storedServer === server;
  if (stored.apiKey && sameServer) return { ...connection, apiKey: stored.apiKey, keySource: "config" };
  if (stored.accessToken && sameServer) {
    const accessToken: StoredAccessToken = {
      value: stored.accessToken,
      // A token without a stored expiry counts as expired: the user logs in again rather than guess.
      expiresAt: stored.accessTokenExpiresAt ?? new Date(0).toISOString(),
      ...(stored.accessTokenId ? { id: stored.accessTokenId } : {}),
      ...(stored.email ? { email: stored.email } : {}),
      ...(stored.loginMethod === "sso" ? { loginMethod: "sso" as const } : {}),
    };
    return { ...connection, accessToken };
  }
  if ((stored.apiKey || stored.accessToken) && storedServer && storedServer !== server)
    return { ...connection, storedServer };
  return connection;
}

/** True when a stored access token's expiry has passed at `now` (or cannot be read). */
export function isExpired(token: Pick<StoredAccessToken, "expiresAt">, now: Date): boolean {
  const expiresAt = Date.parse(token.expiresAt);
  return Number.isNaN(expiresAt) || expiresAt <= now.getTime();
}

function safeNormalize(raw: string): string | undefined {
  try {
    return normalizeServer(raw);
  } catch {
    return undefined;
  }
}
