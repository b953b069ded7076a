/**
 * `moat connect RESOURCE`: a fresh access token from the control plane, then `psql` pointed at the
 * resource's agent with that token as the password (the token never touches the command line or
 * a file). `--print` shows the connection string for other tools (no secret), `--env` prints shell
 * exports for them, token included. Postgres resources today.
 */
import { spawn } from "node:child_process";
import type { Command } from "commander";
import type { ApiClient, Resource } from "../api-client.js";
import type { CommandContext } from "../context.js";
import { CliError, CliErrorCode } from "../errors.js";
import type { CliIo } from "../io.js";
import type { Output } from "../output.js";

export interface ConnectOptions {
  db?: string;
  host?: string;
  port?: string;
  sslmode?: string;
  print?: boolean;
  env?: boolean;
  psql?: string;
}

export interface ConnectionParameters {
  host: string;
  port: number;
  user: string;
  database: string;
  sslmode: string;
}

const SSL_MODES = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];
const WILDCARDS = new Set(["", "0.0.0.0", "::", "[::]", "*"]);

/** Host and port of an agent listen address: `127.0.0.1:6432`, `[::1]:6432`, `:6432`. */
export function parseListenAddress(address: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([^\]]*)\]|([^:[\]]*)):(\d{1,5})$/.exec(address.trim());
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: m[1] ?? m[2] ?? "", port };
}

/** The user an access token is for (its `sub`): the name the agent expects at start-up. */
export function tokenSubject(token: string): string | undefined {
  const payload = token.split(".")[1];
  if (!payload) return undefined;
  try {
    const claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as { sub?: unknown };
    return typeof claims.sub === "string" && claims.sub !== "" ? claims.sub : undefined;
  } catch {
    return undefined;
  }
}

/** A value for a POSIX shell, single-quoted. */
function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

function connectionUri(p: ConnectionParameters): string {
  const host = p.host.includes(":") ? `[${p.host}]` : p.host;
  return `postgresql://${encodeURIComponent(p.user)}@${host}:${p.port}/${encodeURIComponent(p.database)}?sslmode=${p.sslmode}`;
}

function defaultExec(
  command: string,
  args: readonly string[],
  env: Record<string, string | undefined>,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: "inherit", env });
    child.once("error", reject);
    // psql handles Ctrl-C itself (it cancels the running query); moat must not die of it meanwhile.
    const ignore = () => undefined;
    process.on("SIGINT", ignore);
    child.once("exit", (code, signal) => {
      process.off("SIGINT", ignore);
      resolve(code ?? (signal ? 128 + 2 : 1));
    });
  });
}

export function createConnectCommand(deps: {
  client: Pick<ApiClient, "listResources" | "issueToken" | "whoami">;
  out: Output;
  io: Pick<CliIo, "env" | "exec">;
}) {
  const { client, out, io } = deps;

  async function resolveResource(name: string): Promise<Resource> {
    const resources = await client.listResources();
    const resource = resources.find((r) => r.name === name) ?? resources.find((r) => r.id === name);
    if (!resource) {
      const known = resources.map((r) => r.name).sort();
      throw new CliError("not_found", `no resource named "${name}"`, {
        hint: known.length > 0 ? `resources: ${known.join(", ")}` : "no agent has announced a resource yet",
      });
    }
    if (resource.type !== "postgres")
      throw new CliError(
        CliErrorCode.usage,
        `"${resource.name}" is a ${resource.type} resource; moat connect supports postgres resources today`,
      );
    return resource;
  }

  function target(resource: Resource, options: ConnectOptions): { host: string; port: number } {
    const listen = parseListenAddress(resource.listenAddress);
    let port = listen?.port;
    if (options.port !== undefined) {
      port = Number(options.port);
      if (!Number.isInteger(port) || port < 1 || port > 65535)
        throw new CliError(CliErrorCode.usage, `--port must be a port number, not "${options.port}"`);
    }
    const host = options.host ?? (listen && !WILDCARDS.has(listen.host) ? listen.host : undefined);
    if (host === undefined || port === undefined)
      throw new CliError(
        CliErrorCode.usage,
        `the agent of "${resource.name}" listens on "${resource.listenAddress || "an unknown address"}", which says no host to dial`,
        { hint: "pass --host (and --port) with the agent's address as seen from here" },
      );
    return { host, port };
  }

  return {
    async connect(name: string, options: ConnectOptions, passthrough: string[]): Promise<number> {
      const sslmode = options.sslmode ?? "require";
      if (!SSL_MODES.includes(sslmode))
        throw new CliError(CliErrorCode.usage, `--sslmode must be one of ${SSL_MODES.join(", ")}`);
      if (options.print && options.env) throw new CliError(CliErrorCode.usage, "--print and --env do not go together");
      const resource = await resolveResource(name);
      const { host, port } = target(resource, options);
      const database = options.db ?? "postgres";
      if (options.print) {
        // No token minted just to say where to connect: the user is the caller's own name (the
        // subject of the tokens the control plane issues to it).
        const user = (await client.whoami()).email;
        const params = { host, port, user, database, sslmode };
        if (out.json) out.data({ ...params, uri: connectionUri(params) });
        else {
          out.text(connectionUri(params));
          out.text("# password: a Moat access token (`moat token`), valid 15 minutes");
        }
        return 0;
      }
      const token = await client.issueToken();
      const user = tokenSubject(token.accessToken);
      if (!user) throw new CliError("unexpected_response", "the control plane returned a token without a subject");
      const env: Record<string, string> = {
        PGHOST: host,
        PGPORT: String(port),
        PGUSER: user,
        PGDATABASE: database,
        PGSSLMODE: sslmode,
        PGPASSWORD: token.accessToken,
        PGAPPNAME: "moat connect",
      };
      if (options.env) {
        if (out.json) out.data({ env, expiresAt: token.expiresAt });
        else {
          for (const [k, v] of Object.entries(env)) out.text(`export ${k}=${shellQuote(v)}`);
          out.text(`# the password is an access token that expires at ${token.expiresAt}`);
        }
        return 0;
      }
      const exec = io.exec ?? defaultExec;
      const psql = options.psql ?? "psql";
      try {
        return await exec(psql, passthrough, { ...io.env, ...env });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "ENOENT")
          throw new CliError(CliErrorCode.usage, `${psql} was not found`, {
            hint: "install the PostgreSQL client (psql), or use --print / --env to connect with another tool",
          });
        throw error;
      }
    },
  };
}

export function registerConnectCommand(program: Command, context: CommandContext): void {
  program
    .command("connect")
    .description("connect to a resource through its agent (runs psql with a fresh access token)")
    .argument("<resource>", "the resource's name")
    .argument("[psql-args...]", "arguments for psql, after --")
    .option("--db <name>", "database to open (default: postgres; agents whose target names a database use theirs)")
    .option("--host <host>", "the agent's host, when its listen address does not say (0.0.0.0)")
    .option("--port <port>", "the agent's port, when it differs from its listen address")
    .option("--sslmode <mode>", "libpq sslmode towards the agent (default: require)")
    .option("--print", "print the connection string (no secret) instead of running psql")
    .option("--env", "print PG* shell exports, the access token included, instead of running psql")
    .option("--psql <path>", "the psql program to run (default: psql on PATH)")
    .addHelpText(
      "after",
      "\nExamples:\n  moat connect prod-db --db app\n  moat connect prod-db --db app -- -c 'SELECT 1'\n  eval \"$(moat connect prod-db --db app --env)\" && pg_dump -t users",
    )
    .action(async (name: string, passthrough: string[], options: ConnectOptions, command: Command) => {
      const session = context.connect(command);
      const code = await createConnectCommand({ client: session.client, out: session.out, io: context.io }).connect(
        name,
        options,
        passthrough,
      );
      context.setExitCode(code);
    });
}
