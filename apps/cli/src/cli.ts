/**
 * The composition root of `moat`: builds the commander program, wires config, API client and output
 * into the command modules, and turns every outcome into an exit status. `run` takes argv and an
 * injectable `CliIo`, so tests drive the real CLI in-process; `main.ts` only binds it to the process.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { createApiClient, type ClientAuth } from "./api-client.js";
import { registerAgentCommands } from "./commands/agents.js";
import { registerApiKeyCommands } from "./commands/api-keys.js";
import { registerAuditCommands } from "./commands/audit.js";
import { registerGroupCommands } from "./commands/groups.js";
import { registerPolicyCommands } from "./commands/policy.js";
import { registerResourceCommands } from "./commands/resources.js";
import { registerConnectCommand } from "./commands/connect.js";
import { registerSessionCommands } from "./commands/session.js";
import { registerStatusCommand } from "./commands/status.js";
import { registerTokenCommands } from "./commands/tokens.js";
import { registerUserCommands } from "./commands/users.js";
import type { CommandContext, GlobalOptions } from "./context.js";
import { configPath, isExpired, isExposed, readConfig, resolveConnection, type Connection } from "./credentials.js";
import { CliError, CliErrorCode, ExitCode, notLoggedIn, sessionExpired } from "./errors.js";
import type { CliIo } from "./io.js";
import { createOutput } from "./output.js";
import { VERSION } from "./version.js";

/** Seconds to wait for each API call unless `--timeout` says otherwise. */
export const DEFAULT_TIMEOUT_SECONDS = 10;

const HELP_FOOTER = `
Configuration:
  \`moat login\` stores the server URL and your credential (an API key, or the access
  token of a password or single sign-on login) in $MOAT_CONFIG, else
  $XDG_CONFIG_HOME/moat/config.json, else ~/.config/moat/config.json (mode 0600).
  MOAT_SERVER and MOAT_API_KEY override the file; --server overrides MOAT_SERVER.

Exit status:
  0 ok, 1 other failure, 2 usage error or invalid input, 3 not logged in, session
  expired, credential rejected or single sign-on failed, 4 permission denied,
  5 not found, 6 conflict, 7 control plane unreachable (or the identity provider).

See docs/cli.md for the full reference.`;

function parseTimeout(value: string): number {
  const seconds = Number(value);
  if (!Number.isFinite(seconds) || seconds <= 0)
    throw new InvalidArgumentError("expected a positive number of seconds");
  return Math.round(seconds * 1000);
}

function createContext(io: CliIo, status: { code: number }): CommandContext {
  const globals = (command: Command): GlobalOptions => {
    const options = command.optsWithGlobals<Partial<GlobalOptions>>();
    return { ...options, timeout: options.timeout ?? DEFAULT_TIMEOUT_SECONDS * 1000 };
  };
  const output = (command: Command) =>
    createOutput({
      stdout: io.stdout,
      stderr: io.stderr,
      json: globals(command).json === true,
      ...(io.now ? { now: io.now } : {}),
    });
  const path = () => configPath(io.env);
  const client = (server: string, auth: ClientAuth | undefined, command: Command) =>
    createApiClient({
      server,
      ...(auth ? { auth } : {}),
      timeoutMs: globals(command).timeout,
      ...(io.fetch ? { fetch: io.fetch } : {}),
    });

  return {
    io,
    globals,
    output,
    configPath: path,
    client,
    setExitCode(code) {
      status.code = code;
    },
    connect(command, options = {}) {
      const file = path();
      const stored = readConfig(file);
      const out = output(command);
      const connection = resolveConnection({
        ...(globals(command).server ? { flagServer: globals(command).server } : {}),
        env: io.env,
        stored,
      });
      const server = connection.server;
      if (!server) throw notLoggedIn();
      const authError = credentialProblem(
        { ...connection, server },
        stored.accessToken ? "access token" : "API key",
        out.now(),
      );
      if (authError && (options.requireKey ?? true)) throw authError;
      if (connection.keySource === "config" || connection.accessToken) {
        const what = connection.accessToken ? "access token" : "API key";
        if (isExposed(file))
          out.note(`warning: ${file} holds your ${what} and other users can read it: run \`chmod 600 ${file}\``);
      }
      const token = authError ? undefined : connection.accessToken;
      const auth: ClientAuth | undefined = connection.apiKey
        ? { apiKey: connection.apiKey }
        : token
          ? {
              accessToken: token.value,
              ...(token.email ? { email: token.email } : {}),
              ...(token.loginMethod === "sso" ? { sso: true } : {}),
            }
          : undefined;
      return {
        out,
        client: client(server, auth, command),
        server,
        connection,
        ...(authError ? { authError } : {}),
      };
    },
  };
}

/** Why `connection` cannot authenticate: no credential for its server, or an expired access token. */
function credentialProblem(
  connection: Connection & { server: string },
  storedKind: string,
  now: Date,
): CliError | undefined {
  if (connection.apiKey) return undefined;
  if (connection.accessToken) {
    // Checked locally so an expired token is never sent, and the user learns why at once.
    return isExpired(connection.accessToken, now)
      ? sessionExpired(connection.server, {
          ...(connection.accessToken.email ? { email: connection.accessToken.email } : {}),
          sso: connection.accessToken.loginMethod === "sso",
        })
      : undefined;
  }
  return notLoggedIn(
    connection.server,
    connection.storedServer
      ? `the stored ${storedKind} belongs to ${connection.storedServer} and is not sent to other servers`
      : undefined,
  );
}

/** Builds a fresh program (commander keeps parse state, so one per invocation). */
export function buildProgram(io: CliIo, status: { code: number } = { code: 0 }): Command {
  const program = new Command("moat");
  program
    .description("Command-line client of the Moat control plane")
    .version(VERSION, "-V, --version", "print the version of moat")
    .addOption(new Option("--server <url>", "control plane URL (default: $MOAT_SERVER, then the config file)"))
    .option("--json", "print machine-readable JSON (errors as problem JSON on stderr)")
    .addOption(
      new Option(
        "--timeout <seconds>",
        `seconds to wait for each request (default: ${DEFAULT_TIMEOUT_SECONDS})`,
      ).argParser(parseTimeout),
    )
    .showSuggestionAfterError(true)
    .configureOutput({
      writeOut: (text) => void io.stdout.write(text),
      writeErr: (text) => void io.stderr.write(text),
      // Parse errors are rendered by `run` like every other error (text or problem JSON).
      outputError: () => undefined,
    })
    .exitOverride()
    .addHelpText("after", HELP_FOOTER);

  const context = createContext(io, status);
  registerSessionCommands(program, context);
  registerStatusCommand(program, context);
  registerAgentCommands(program, context);
  registerResourceCommands(program, context);
  registerPolicyCommands(program, context);
  registerTokenCommands(program, context);
  registerUserCommands(program, context);
  registerApiKeyCommands(program, context);
  registerGroupCommands(program, context);
  registerAuditCommands(program, context);
  registerConnectCommand(program, context);
  return program;
}

// Commander's own message prefix; the CLI prints "moat: <detail> (<code>)" instead.
const commanderPrefix = /^error:\s*/;

function toCliError(error: unknown): CliError {
  if (error instanceof CliError) return error;
  if (error instanceof CommanderError) {
    return new CliError(
      CliErrorCode.usage,
      error.message
        .replace(commanderPrefix, "")
        .replace(/\s*\n\s*/g, " ")
        .trim(),
      {
        hint: "run `moat --help`, or `moat COMMAND --help`",
      },
    );
  }
  // A bug, not a user error: keep the message, and the stack for MOAT_DEBUG.
  return new CliError("internal", error instanceof Error ? error.message : String(error), { cause: error });
}

// eslint-disable-next-line no-control-regex
const unsafe = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g;

/** Prints an error to stderr, as one problem JSON line with `--json`, else as `moat: detail (code)`. */
export function reportError(error: CliError, io: Pick<CliIo, "stderr" | "env">, json: boolean): void {
  if (json) {
    io.stderr.write(`${JSON.stringify(error.toProblem())}\n`);
    return;
  }
  const lines = [`moat: ${error.message.replace(unsafe, "?")} (${error.code})`];
  const seen = new Set<string>();
  for (const field of error.fields) {
    // Ajv repeats a message once per union member ("must be equal to constant" x4): show it once.
    const line = `  ${field.field}: ${field.message}`.replace(unsafe, "?");
    if (!seen.has(line)) lines.push(line);
    seen.add(line);
  }
  if (error.hint) lines.push(`  hint: ${error.hint}`);
  if (error.code === "internal" && io.env.MOAT_DEBUG && error.cause instanceof Error && error.cause.stack)
    lines.push(error.cause.stack);
  io.stderr.write(`${lines.join("\n")}\n`);
}

/**
 * Runs `moat` with `argv` (without the node and script paths) and returns the exit status.
 * Never throws and never calls process.exit.
 */
export async function run(argv: readonly string[], io: CliIo): Promise<number> {
  const status = { code: ExitCode.ok as number };
  const program = buildProgram(io, status);
  try {
    await program.parseAsync([...argv], { from: "user" });
    return status.code;
  } catch (error) {
    if (error instanceof CommanderError) {
      // --help and --version end parsing with exit code 0; a bare `moat agents` printed its help to stderr.
      if (error.exitCode === 0) return ExitCode.ok;
      if (error.code === "commander.help") return ExitCode.usage;
    }
    const end = argv.indexOf("--");
    const json =
      (program.opts<Partial<GlobalOptions>>().json ?? false) ||
      (end < 0 ? argv : argv.slice(0, end)).includes("--json");
    const cliError = toCliError(error);
    reportError(cliError, io, json);
    return cliError.exitCode;
  }
}
