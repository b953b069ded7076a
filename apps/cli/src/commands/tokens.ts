/**
 * `moat token`: a short-lived access token for scripts (`curl -H "Authorization: Bearer $(moat token)"`),
 * minted with the API key in use, or the token of the current password or single sign-on login while
 * it is valid (a token cannot mint another). `moat tokens list|revoke`: the access tokens issued to a
 * user. The metadata commands never print a token; `moat token` prints exactly one, to stdout.
 */
import type { Command } from "commander";
import type { AccessToken, AccessTokenInfo, ApiClient } from "../api-client.js";
import type { CommandContext } from "../context.js";
import type { Connection } from "../credentials.js";
import { clean, formatTable, relativeTime, type Output } from "../output.js";
import { resolveUser } from "./users.js";

/** "active", "revoked" or "expired", as of `now`. */
export function tokenState(token: Pick<AccessTokenInfo, "revokedAt" | "expiresAt">, now: Date): string {
  if (token.revokedAt) return "revoked";
  if (Date.parse(token.expiresAt) <= now.getTime()) return "expired";
  return "active";
}

/** The token commands over narrow dependencies. */
export function createTokenCommands(deps: {
  client: Pick<ApiClient, "issueToken" | "whoami" | "listTokens" | "revokeToken" | "listUsers">;
  out: Output;
  /** The credential in use (an API key or the login's token): either mints tokens for agents. */
  connection: Pick<Connection, "apiKey" | "accessToken">;
}) {
  const { client, out, connection } = deps;

  return {
    async token(): Promise<AccessToken> {
      // Always a fresh token for agents (what you present to resources). The login token stays in
      // the config file for the REST API only: agents refuse it, and the API refuses agent tokens.
      const token = await client.issueToken();
      if (out.json) out.data(token);
      else out.text(token.accessToken);
      return token;
    },

    async list(options: { user?: string }): Promise<AccessTokenInfo[]> {
      const user = options.user === undefined ? undefined : await resolveUser(client, options.user);
      const tokens = await client.listTokens(user?.id);
      if (out.json) {
        out.data({ items: tokens });
        return tokens;
      }
      if (tokens.length === 0) {
        out.text(`No unexpired access tokens${user ? ` for ${clean(user.label)}` : ""}.`);
        return tokens;
      }
      const now = out.now();
      const current = connection.apiKey ? undefined : connection.accessToken?.id;
      const rows = [...tokens]
        .sort((a, b) => b.issuedAt.localeCompare(a.issuedAt))
        .map((t) => [
          clean(t.id),
          clean(t.source),
          tokenState(t, now),
          relativeTime(t.issuedAt, now),
          relativeTime(t.expiresAt, now),
          t.id === current ? "(this login)" : "",
        ]);
      out.text(formatTable(["ID", "SOURCE", "STATE", "ISSUED", "EXPIRES", ""], rows));
      return tokens;
    },

    async revoke(id: string): Promise<void> {
      await client.revokeToken(id);
      if (out.json) out.data({ revoked: true, id });
      else out.text(`Revoked access token ${clean(id)}: the control plane and every agent refuse it from now on.`);
    },
  };
}

/** Adds `token` and `tokens` to the program. */
export function registerTokenCommands(program: Command, context: CommandContext): void {
  const commands = (command: Command) => {
    const session = context.connect(command);
    return createTokenCommands({ client: session.client, out: session.out, connection: session.connection });
  };

  program
    .command("token")
    .description("print a short-lived access token for scripts (--json: with its id and expiry)")
    .addHelpText(
      "after",
      "\nWith an API key (MOAT_API_KEY or `moat login --api-key`) a new token is issued each time; after a\n" +
        "password or single sign-on login it is the token of that login, until it expires.\n\n" +
        "Example:\n" +
        '  curl -H "Authorization: Bearer $(moat token)" "$MOAT_SERVER/api/v1/whoami"',
    )
    .action(async (_options: unknown, command: Command) => {
      await commands(command).token();
    });

  const tokens = program.command("tokens").description("list and revoke access tokens");

  tokens
    .command("list")
    .alias("ls")
    .description("list the unexpired access tokens of a user (default: yours)")
    .option("--user <user>", "email, service-account name, id, or me (others' tokens: admin, auditor)")
    .action(async (options: { user?: string }, command: Command) => {
      await commands(command).list(options);
    });

  tokens
    .command("revoke")
    .description("revoke an access token (yours, or anyone's as an admin)")
    .argument("<id>", "the token's id (`moat tokens list` shows it)")
    .action(async (id: string, _options: unknown, command: Command) => {
      await commands(command).revoke(id);
    });
}
