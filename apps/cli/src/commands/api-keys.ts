/**
 * `moat api-keys ...`: the API keys automation authenticates with (`MOAT_API_KEY`, `moat login
 * --api-key`), your own or, as an admin, anyone's (a service account's above all). A new key is
 * printed once, when created; afterwards only its metadata is shown.
 */
import type { Command } from "commander";
import type { ApiClient, ApiKey, CreatedApiKey } from "../api-client.js";
import type { CommandContext } from "../context.js";
import { positiveInteger } from "../options.js";
import { clean, formatTable, relativeTime, type Output } from "../output.js";
import { resolveUser } from "./users.js";

/** "active", "revoked" or "expired", as of `now`. */
export function apiKeyState(key: Pick<ApiKey, "revokedAt" | "expiresAt">, now: Date): string {
  if (key.revokedAt) return "revoked";
  if (key.expiresAt && Date.parse(key.expiresAt) <= now.getTime()) return "expired";
  return "active";
}

/** The API key commands over narrow dependencies. */
export function createApiKeyCommands(deps: {
  client: Pick<ApiClient, "listApiKeys" | "createApiKey" | "revokeApiKey" | "listUsers" | "whoami">;
  out: Output;
}) {
  const { client, out } = deps;

  return {
    async list(options: { user?: string }): Promise<ApiKey[]> {
      const user = await resolveUser(client, options.user ?? "me");
      const keys = await client.listApiKeys(user.id);
      if (out.json) {
        out.data({ items: keys });
        return keys;
      }
      if (keys.length === 0) {
        out.text(`No API keys for ${clean(user.label)}. Create one with \`moat api-keys create NAME\`.`);
        return keys;
      }
      const now = out.now();
      const rows = keys.map((k) => [
        clean(k.name),
        clean(k.id),
        apiKeyState(k, now),
        relativeTime(k.createdAt, now),
        k.expiresAt ? relativeTime(k.expiresAt, now) : "never",
        relativeTime(k.lastUsedAt, now),
      ]);
      out.text(formatTable(["NAME", "ID", "STATE", "CREATED", "EXPIRES", "LAST USED"], rows));
      return keys;
    },

    async create(name: string, options: { user?: string; expiresInDays?: number }): Promise<CreatedApiKey> {
      const user = await resolveUser(client, options.user ?? "me");
      const created = await client.createApiKey(user.id, {
        name,
        ...(options.expiresInDays !== undefined ? { expiresInDays: options.expiresInDays } : {}),
      });
      if (out.json) {
        out.data(created);
        return created;
      }
      const { key } = created;
      const expiry = key.expiresAt
        ? `valid until ${clean(key.expiresAt)} (${relativeTime(key.expiresAt, out.now())})`
        : "no expiry";
      out.text(`Created API key ${clean(key.name)} (id ${clean(key.id)}) for ${clean(user.label)}; ${expiry}.`);
      out.text("");
      out.text("The key (shown once: store it in your secret manager now):");
      out.text("");
      out.text(`  ${created.apiKey}`);
      out.text("");
      out.text("Use it as MOAT_API_KEY, or `moat token` with it to get a short-lived access token.");
      out.text(`Revoke it with \`moat api-keys revoke ${clean(key.id)}\`.`);
      return created;
    },

    async revoke(id: string): Promise<void> {
      await client.revokeApiKey(id);
      if (out.json) out.data({ revoked: true, id });
      else out.text(`Revoked API key ${clean(id)}: it no longer works.`);
    },
  };
}

/** Adds `api-keys` and its subcommands to the program. */
export function registerApiKeyCommands(program: Command, context: CommandContext): void {
  const commands = (command: Command) => {
    const session = context.connect(command);
    return createApiKeyCommands({ client: session.client, out: session.out });
  };
  const keys = program
    .command("api-keys")
    .alias("api-key")
    .description("create, list and revoke API keys (for automation and service accounts)");

  keys
    .command("list")
    .alias("ls")
    .description("list the API keys of a user (default: yours)")
    .option("--user <user>", "email, service-account name, id, or me (others' keys: admin)")
    .action(async (options: { user?: string }, command: Command) => {
      await commands(command).list(options);
    });

  keys
    .command("create")
    .description("create an API key and print it once")
    .argument("<name>", "what the key is for, e.g. ci-deploy")
    .option("--user <user>", "whose key: email, service-account name, id, or me (others: admin)")
    .option("--expires-in-days <days>", "the key stops working after this many days (default: never)", positiveInteger)
    .action(async (name: string, options: { user?: string; expiresInDays?: number }, command: Command) => {
      await commands(command).create(name, options);
    });

  keys
    .command("revoke")
    .description("revoke an API key (yours, or anyone's as an admin); it stops working at once")
    .argument("<id>", "the key's id (`moat api-keys list` shows it)")
    .action(async (id: string, _options: unknown, command: Command) => {
      await commands(command).revoke(id);
    });
}
