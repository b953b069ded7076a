/**
 * `moat status`: is the control plane reachable and ready, what is it running, who am I there and
 * how am I authenticated. Probes first (public), so "unreachable" and "not logged in" are told
 * apart. `moat whoami`: just who am I (identity, role, groups, credential).
 */
import type { Command } from "commander";
import type { ApiClient, ControlPlaneStatus, Readiness, Whoami } from "../api-client.js";
import type { CommandContext } from "../context.js";
import type { Connection, LoginMethod } from "../credentials.js";
import { CliErrorCode, notLoggedIn, type CliError } from "../errors.js";
import { clean, formatFields, timestamp, type Output } from "../output.js";

/**
 * How an invocation authenticated: an API key (from the environment or the config file), or the
 * access token of a password or single sign-on login.
 */
export type AuthInfo =
  | { method: "api-key"; source: "env" | "config"; apiKeyId: string | null }
  | { method: "access-token"; tokenId: string | null; expiresAt: string; loginMethod: LoginMethod };

/** What `--json` prints. */
export interface StatusResult {
  server: string;
  reachable: true;
  readiness: Readiness;
  status: ControlPlaneStatus;
  whoami: Whoami;
  auth: AuthInfo;
}

/** The credential of `connection`, with the ids the control plane reported for it. */
export function authInfo(connection: Connection, whoami: Whoami): AuthInfo {
  if (connection.accessToken) {
    return {
      method: "access-token",
      tokenId: whoami.tokenId ?? connection.accessToken.id ?? null,
      expiresAt: connection.accessToken.expiresAt,
      loginMethod: connection.accessToken.loginMethod ?? "password",
    };
  }
  return { method: "api-key", source: connection.keySource ?? "config", apiKeyId: whoami.apiKeyId ?? null };
}

/**
 * "API key k1 (from MOAT_API_KEY)", "access token t1 (password login), expires 2025-... (in 14m)",
 * "access token t2 (single sign-on), expires ...".
 */
export function formatAuth(auth: AuthInfo, now: Date): string {
  if (auth.method === "api-key")
    return `API key ${clean(auth.apiKeyId)} (from ${auth.source === "env" ? "MOAT_API_KEY" : "the config file"})`;
  const how = auth.loginMethod === "sso" ? "single sign-on" : "password login";
  return `access token ${clean(auth.tokenId)} (${how}), expires ${timestamp(auth.expiresAt, now)}`;
}

/** The status command over narrow dependencies. */
export function createStatusCommand(deps: {
  client: Pick<ApiClient, "readiness" | "status" | "whoami">;
  out: Output;
  server: string;
  connection: Connection;
  /** Set when there is no usable credential: thrown once the control plane is known to be reachable. */
  authError?: CliError | undefined;
}) {
  return async function status(): Promise<StatusResult> {
    const readiness = await deps.client.readiness();
    if (deps.authError?.code === CliErrorCode.notLoggedIn)
      throw notLoggedIn(deps.server, deps.authError.hint ?? `the control plane at ${deps.server} is reachable`);
    if (deps.authError) throw deps.authError;
    const [cp, whoami] = await Promise.all([deps.client.status(), deps.client.whoami()]);
    const auth = authInfo(deps.connection, whoami);
    const result: StatusResult = { server: deps.server, reachable: true, readiness, status: cp, whoami, auth };
    if (deps.out.json) {
      deps.out.data(result);
      return result;
    }
    const ready =
      readiness.status === "ready"
        ? "ready"
        : `NOT READY: ${Object.entries(readiness.checks)
            .filter(([, v]) => v !== "ok")
            .map(([k, v]) => `${clean(k)} ${clean(v)}`)
            .join(", ")}`;
    deps.out.text(
      formatFields([
        ["Server", `${deps.server} (reachable, ${ready})`],
        ["Version", `${clean(cp.version)} (replica ${clean(cp.replica)})`],
        ["Store", clean(cp.store)],
        ["Agents", `${cp.agents.total} total, ${cp.agents.connected} connected, ${cp.agents.pending} pending`],
        ["Resources", String(cp.resources)],
        ["User", `${clean(whoami.email)} (role ${clean(whoami.role)})`],
        ["Auth", formatAuth(auth, deps.out.now())],
      ]),
    );
    return result;
  };
}

/** The whoami command over narrow dependencies: `--json` prints the API's answer. */
export function createWhoamiCommand(deps: { client: Pick<ApiClient, "whoami">; out: Output; connection: Connection }) {
  return async function whoami(): Promise<Whoami> {
    const me = await deps.client.whoami();
    if (deps.out.json) {
      deps.out.data(me);
      return me;
    }
    deps.out.text(
      formatFields([
        ["User", clean(me.email)],
        ["Name", clean(me.displayName)],
        ["ID", clean(me.id)],
        ["Kind", clean(me.kind)],
        ["Role", clean(me.role)],
        ["Groups", clean(me.groups.join(", "))],
        ["Auth", formatAuth(authInfo(deps.connection, me), deps.out.now())],
      ]),
    );
    return me;
  };
}

/** Adds `status` and `whoami` to the program. */
export function registerStatusCommand(program: Command, context: CommandContext): void {
  program
    .command("status")
    .description("show the control plane's health, version and counts, who you are and how you logged in")
    .action(async (_options: unknown, command: Command) => {
      const session = context.connect(command, { requireKey: false });
      await createStatusCommand({
        client: session.client,
        out: session.out,
        server: session.server,
        connection: session.connection,
        authError: session.authError,
      })();
    });

  program
    .command("whoami")
    .description("show who you are: email, role, groups, and the API key or access token in use")
    .action(async (_options: unknown, command: Command) => {
      const session = context.connect(command);
      await createWhoamiCommand({ client: session.client, out: session.out, connection: session.connection })();
    });
}
