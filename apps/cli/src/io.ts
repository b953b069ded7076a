/**
 * The CLI's edges to the terminal, injectable so commands run in-process in tests: output streams,
 * environment, stdin, clock, fetch and the browser opener. Also owns reading from stdin: one line, a
 * y/N confirmation (and the confirmation rule of deletions), a secret typed without echo, and a
 * password. Nothing here knows about commands or the API.
 */
import { CliError, CliErrorCode } from "./errors.js";

/** Where a command writes. Only `write` is needed, so tests can pass plain collectors. */
export interface Writer {
  write(chunk: string): unknown;
}

/** stdin as the CLI uses it: a byte stream that may be a terminal. */
export type Input = NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?: (mode: boolean) => unknown };

/** Everything a `moat` invocation touches outside its own code. */
export interface CliIo {
  stdout: Writer;
  stderr: Writer;
  stdin: Input;
  env: Record<string, string | undefined>;
  now?: () => Date;
  fetch?: typeof fetch;
  /** Opens a URL in the user's browser (`moat login --sso`); injected in tests, else best effort. */
  openBrowser?: (url: string) => void;
  /**
   * Calls `handler` on Ctrl-C (SIGINT) or SIGTERM instead of ending the process, until the returned
   * function is called; a second Ctrl-C ends the process as usual. Commands that run until
   * interrupted (`moat audit tail -f`) use it to stop cleanly with status 0. Absent: no interrupts.
   */
  onInterrupt?: (handler: () => void) => () => void;
  /**
   * Runs a program attached to this terminal (`moat connect` runs psql) and resolves with its exit
   * status; rejects if it cannot be started (e.g. ENOENT). Absent: spawned with inherited stdio.
   */
  exec?: (command: string, args: readonly string[], env: Record<string, string | undefined>) => Promise<number>;
}

const MAX_LINE_BYTES = 64 * 1024;

/** Reads one line from `input` (without its line ending); undefined at end of input with nothing read. */
export function readLine(input: Input): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    let buffered = "";
    const cleanup = () => {
      input.removeListener("data", onData);
      input.removeListener("end", onEnd);
      input.removeListener("error", onError);
      // Paused, stdin no longer keeps the process alive once the command is done.
      input.pause();
    };
    const onData = (chunk: Buffer | string) => {
      buffered += chunk.toString();
      const newline = buffered.indexOf("\n");
      if (newline >= 0) {
        cleanup();
        resolve(buffered.slice(0, newline).replace(/\r$/, ""));
      } else if (buffered.length > MAX_LINE_BYTES) {
        cleanup();
        reject(new CliError(CliErrorCode.usage, `the line read from stdin is longer than ${MAX_LINE_BYTES} bytes`));
      }
    };
    const onEnd = () => {
      cleanup();
      resolve(buffered.length > 0 ? buffered.replace(/\r$/, "") : undefined);
    };
    const onError = (error: Error) => {
      cleanup();
      reject(error);
    };
    input.on("data", onData);
    input.once("end", onEnd);
    input.once("error", onError);
    input.resume();
  });
}

/** Asks a yes/no question on stderr and reads the answer from stdin; only "y" or "yes" is a yes. */
export async function confirm(io: Pick<CliIo, "stdin" | "stderr">, question: string): Promise<boolean> {
  io.stderr.write(`${question} [y/N] `);
  const answer = await readLine(io.stdin);
  return /^\s*y(es)?\s*$/i.test(answer ?? "");
}

/**
 * The confirmation rule of every `delete` command: `--yes` skips it; otherwise a y/N question when
 * stdin is a terminal, and a refusal (exit 2) when it is not, so a script never deletes by accident.
 * `what` names the thing, e.g. `agent "edge-1"`; `question` is asked as is.
 */
export async function confirmDeletion(
  io: Pick<CliIo, "stdin" | "stderr">,
  options: { yes?: boolean; what: string; question: string },
): Promise<void> {
  if (options.yes) return;
  if (!io.stdin.isTTY) {
    throw new CliError(CliErrorCode.confirmationRequired, `refusing to delete ${options.what} without confirmation`, {
      hint: "stdin is not a terminal, so nobody can answer a prompt: pass --yes",
    });
  }
  if (!(await confirm(io, options.question)))
    throw new CliError(CliErrorCode.aborted, `${options.what} was not deleted`);
}

/**
 * Reads a secret from a terminal without echoing it (raw mode, so we see each key). Enter ends it,
 * Ctrl-C aborts, Backspace edits. Falls back to a plain line read when raw mode is unavailable.
 */
export function promptSecret(io: Pick<CliIo, "stdin" | "stderr">, prompt: string): Promise<string> {
  const { stdin, stderr } = io;
  stderr.write(prompt);
  if (typeof stdin.setRawMode !== "function") return readLine(stdin).then((line) => line ?? "");
  const setRawMode = stdin.setRawMode.bind(stdin);
  return new Promise((resolve, reject) => {
    let secret = "";
    const finish = (error?: CliError) => {
      stdin.removeListener("data", onData);
      setRawMode(false);
      stdin.pause();
      stderr.write("\n");
      if (error) reject(error);
      else resolve(secret);
    };
    const onData = (chunk: Buffer | string) => {
      for (const char of chunk.toString()) {
        if (char === "\r" || char === "\n" || char === "\u0004") return finish();
        if (char === "\u0003") return finish(new CliError(CliErrorCode.aborted, "aborted"));
        if (char === "\u007f" || char === "\b") secret = secret.slice(0, -1);
        else if (char >= " ") secret += char;
      }
    };
    setRawMode(true);
    stdin.on("data", onData);
    stdin.resume();
  });
}

/**
 * Reads a password: typed without echo when stdin is a terminal (twice when `repeat` is given, so a
 * typo does not become someone's password), else the first line of stdin, kept as is apart from
 * its line ending. An empty password is a usage error.
 */
export async function readPassword(
  io: Pick<CliIo, "stdin" | "stderr">,
  options: { prompt: string; repeat?: string },
): Promise<string> {
  let password: string;
  if (io.stdin.isTTY) {
    password = await promptSecret(io, options.prompt);
    if (password && options.repeat && (await promptSecret(io, options.repeat)) !== password)
      throw new CliError(CliErrorCode.usage, "the passwords do not match");
  } else password = (await readLine(io.stdin)) ?? "";
  if (!password) throw new CliError(CliErrorCode.usage, "no password given: the line read was empty");
  return password;
}
