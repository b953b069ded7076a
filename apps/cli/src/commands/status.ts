/**
 * `moat status`: is the control plane reachable and ready, what is it running, and who am I there.
 * Probes first (public), so "unreachable" and "not logged in" are told apart.
 */
import type { Command } from "commander";
import type { ApiClient, ControlPlaneStatus, Readiness, Whoami } from "../api-client.js";
import type { CommandContext } from "../context.js";
import { notLoggedIn } from "../errors.js";
import { clean, formatFields, type Output } from "../output.js";

/** What `--json` prints. */
export interface StatusResult {
  server: string;
  reachable: true;
  readiness: Readiness;
  status: ControlPlaneStatus;
  whoami: Whoami;
}

/** The status command over narrow dependencies. */
export function createStatusCommand(deps: {
  client: Pick<ApiClient, "readiness" | "status" | "whoami">;
  out: Output;
  server: string;
  loggedIn: boolean;
}) {
  return async function status(): Promise<StatusResult> {
    const readiness = await deps.client.readiness();
    if (!deps.loggedIn) throw notLoggedIn(deps.server, `the control plane at ${deps.server} is reachable`);
    const [cp, whoami] = await Promise.all([deps.client.status(), deps.client.whoami()]);
    const result: StatusResult = { server: deps.server, reachable: true, readiness, status: cp, whoami };
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
      ]),
    );
    return result;
  };
}

/** Adds `status` to the program. */
export function registerStatusCommand(program: Command, context: CommandContext): void {
  program
    .command("status")
    .description("show the control plane's health, version and counts, and who you are")
    .action(async (_options: unknown, command: Command) => {
      const session = context.connect(command, { requireKey: false });
      await createStatusCommand({
        client: session.client,
        out: session.out,
        server: session.server,
        loggedIn: session.connection.apiKey !== undefined,
      })();
    });
}
