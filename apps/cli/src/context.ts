/**
 * What every command module receives from the composition root (`cli.ts`): the invocation's I/O and
 * a way to obtain, after commander has parsed the global flags, the output and the API session.
 * Command modules depend on this interface only, never on how config or clients are built.
 */
import type { Command } from "commander";
import type { ApiClient, ClientAuth } from "./api-client.js";
import type { Connection } from "./credentials.js";
import type { CliError } from "./errors.js";
import type { CliIo } from "./io.js";
import type { Output } from "./output.js";

/** Flags accepted by every command (`moat --help` lists them). */
export interface GlobalOptions {
  server?: string;
  json?: boolean;
  /** Per-request timeout, in milliseconds (the flag is in seconds). */
  timeout: number;
}

/** A connected invocation: where to print and whom to ask. */
export interface Session {
  out: Output;
  client: ApiClient;
  /** The normalised control-plane URL. */
  server: string;
  connection: Connection;
  /**
   * Why this invocation cannot authenticate (not logged in, or the session expired), when connected
   * with `requireKey: false`; with it, `connect` throws this error instead.
   */
  authError?: CliError;
}

/** The composition root's services, as command modules see them. */
export interface CommandContext {
  io: CliIo;
  /** Global options as parsed for `command`. */
  globals(command: Command): GlobalOptions;
  /** The output for `command`'s invocation (JSON or text per `--json`). */
  output(command: Command): Output;
  /** Path of the config file for this invocation's environment. */
  configPath(): string;
  /** Builds an API client for an explicit server and credential (login checks one before storing it). */
  client(server: string, auth: ClientAuth | undefined, command: Command): ApiClient;
  /**
   * Resolves server and credential from flags, environment and config file. Throws "not logged in"
   * when there is no server or (unless `requireKey` is false) no key or token for it, and "session
   * expired" (before sending anything) when the stored access token's expiry has passed.
   */
  connect(command: Command, options?: { requireKey?: boolean }): Session;
  /** Makes `moat` exit with this status when the command returns (a program it ran, like psql). */
  setExitCode(code: number): void;
}
