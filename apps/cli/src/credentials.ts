/**
 * Where the CLI keeps its server URL and API key, and how flags and environment override them.
 * Owns the config file: its location (`$MOAT_CONFIG`, XDG, ~/.config), its format, and writing it
 * atomically with mode 0600 in a 0700 directory. It does not talk to the network or print anything.
 */
import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { CliError, CliErrorCode } from "./errors.js";

/** The config file's content. Unknown keys are kept when the CLI rewrites the file. */
export interface StoredConfig {
  server?: string;
  apiKey?: string;
  [key: string]: unknown;
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
  for (const key of ["server", "apiKey"] as const) {
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

/** What a command talks to: the server and, when logged in, the key (and where the key came from). */
export interface Connection {
  server?: string;
  apiKey?: string;
  keySource?: "env" | "config";
  /** Set when the config holds a key for another server than the one chosen (that key is not used). */
  storedServer?: string;
}

/**
 * Precedence: `--server`, then `MOAT_SERVER`, then the config file; `MOAT_API_KEY`, then the config
 * file. The stored key is only used with the server it was stored for: pointing `--server` elsewhere
 * must not send your key to that other server.
 */
export function resolveConnection(input: { flagServer?: string; env: Env; stored: StoredConfig }): Connection {
  const { env, stored } = input;
  const chosen = input.flagServer ?? (env.MOAT_SERVER || undefined) ?? stored.server;
  const server = chosen === undefined ? undefined : normalizeServer(chosen);
  const storedServer = stored.server === undefined ? undefined : safeNormalize(stored.server);
  const connection: Connection = server ? { server } : {};
  if (env.MOAT_API_KEY) return { ...connection, apiKey: env.MOAT_API_KEY.trim(), keySource: "env" };
  if (stored.apiKey && server && storedServer === server)
    return { ...connection, apiKey: stored.apiKey, keySource: "config" };
  if (stored.apiKey && storedServer && storedServer !== server) return { ...connection, storedServer };
  return connection;
}

function safeNormalize(raw: string): string | undefined {
  try {
    return normalizeServer(raw);
  } catch {
    return undefined;
  }
}
