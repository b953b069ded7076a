/**
 * `moat login` and `moat logout`: verify an API key against the control plane and store it, or
 * remove it. The key is never printed, and it is stored only after the control plane accepted it.
 */
import type { Command } from "commander";
import type { ApiClient, Whoami } from "../api-client.js";
import type { CommandContext } from "../context.js";
import { normalizeServer, readConfig, writeConfig, type StoredConfig } from "../credentials.js";
import { CliError, CliErrorCode } from "../errors.js";
import { promptSecret, readLine, type CliIo } from "../io.js";
import { clean, type Output } from "../output.js";

/** What `--json` prints after a login. */
export interface LoginResult {
  server: string;
  configPath: string;
  user: Whoami;
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
  client: (server: string, apiKey: string) => Pick<ApiClient, "whoami">;
}) {
  const { io, out, configPath } = deps;

  async function readApiKey(flagKey: string | undefined): Promise<string> {
    if (flagKey) return flagKey;
    if (io.env.MOAT_API_KEY) return io.env.MOAT_API_KEY;
    if (io.stdin.isTTY) return promptSecret(io, "API key: ");
    return (await readLine(io.stdin)) ?? "";
  }

  return {
    async login(options: { server?: string; apiKey?: string }): Promise<LoginResult> {
      let stored: StoredConfig = {};
      try {
        stored = readConfig(configPath);
      } catch (error) {
        // Logging in is how a broken config gets repaired, so it must not be blocked by one.
        out.note(`warning: ${(error as Error).message}; it will be replaced`);
      }
      const rawServer = options.server ?? (io.env.MOAT_SERVER || undefined) ?? stored.server;
      if (!rawServer) {
        throw new CliError(
          CliErrorCode.usage,
          "which control plane? pass --server URL (e.g. --server http://127.0.0.1:7070)",
        );
      }
      const server = normalizeServer(rawServer);
      const apiKey = (await readApiKey(options.apiKey)).trim();
      if (!apiKey) {
        throw new CliError(
          CliErrorCode.usage,
          "no API key given: pipe it on stdin, set MOAT_API_KEY, or pass --api-key",
        );
      }
      if (!API_KEY_SHAPE.test(apiKey)) {
        // Checked locally so a mistyped value (or a different secret) is never sent anywhere.
        throw new CliError("unauthenticated", "that is not a Moat API key (they look like moat_ak_<id>_<secret>)");
      }
      const url = new URL(server);
      if (url.protocol === "http:" && !isLoopback(url.hostname)) {
        out.note(`warning: ${server} is plain http: the API key travels unencrypted; prefer https://`);
      }
      const user = await deps.client(server, apiKey).whoami();
      const { apiKey: _previous, ...rest } = stored;
      writeConfig(configPath, { ...rest, server, apiKey });
      const result = { server, configPath, user };
      if (out.json) out.data(result);
      else {
        out.text(`Logged in to ${server} as ${clean(user.email)} (role ${clean(user.role)}).`);
        out.text(`The API key is saved in ${configPath} (mode 0600).`);
      }
      return result;
    },

    async logout(): Promise<void> {
      const stored = readConfig(configPath);
      if (!stored.apiKey) {
        if (out.json) out.data({ loggedOut: false, configPath });
        else out.text(`Not logged in: ${configPath} holds no API key.`);
      } else {
        const { apiKey: _removed, ...rest } = stored;
        // The server is kept, so a later `moat login` needs no --server.
        writeConfig(configPath, rest);
        if (out.json) out.data({ loggedOut: true, server: stored.server ?? null, configPath });
        else {
          out.text(
            `Logged out${stored.server ? ` of ${stored.server}` : ""}: the API key was removed from ${configPath}.`,
          );
          out.text("The key itself stays valid on the control plane; if it may have leaked, have an admin revoke it.");
        }
      }
      if (io.env.MOAT_API_KEY)
        out.note("note: MOAT_API_KEY is still set in this environment and is used by every command.");
    },
  };
}

/** Adds `login` and `logout` to the program. */
export function registerSessionCommands(program: Command, context: CommandContext): void {
  program
    .command("login")
    .description("verify an API key with the control plane and save it (reads the key from stdin if not given)")
    .option("--api-key <key>", "the API key (visible in `ps` and shell history: prefer stdin or MOAT_API_KEY)")
    .addHelpText(
      "after",
      "\nExamples:\n  moat login --server https://moat.example.com        # prompts for the key\n" +
        '  echo "$KEY" | moat login --server http://127.0.0.1:7070',
    )
    .action(async (options: { apiKey?: string }, command: Command) => {
      const globals = context.globals(command);
      await createSessionCommands({
        io: context.io,
        out: context.output(command),
        configPath: context.configPath(),
        client: (server, apiKey) => context.client(server, apiKey, command),
      }).login({
        ...(globals.server ? { server: globals.server } : {}),
        ...(options.apiKey ? { apiKey: options.apiKey } : {}),
      });
    });

  program
    .command("logout")
    .description("remove the stored API key (the server URL is kept)")
    .action(async (_options: unknown, command: Command) => {
      await createSessionCommands({
        io: context.io,
        out: context.output(command),
        configPath: context.configPath(),
        client: (server, apiKey) => context.client(server, apiKey, command),
      }).logout();
    });
}
