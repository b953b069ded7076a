/**
 * The CLI's one error type and its exit codes. Every way a command can fail (bad usage, no login,
 * an API problem, an unreachable server) becomes a `CliError` with a stable `code`; `cli.ts` renders
 * it and exits with the code's exit status. Pure: no I/O here.
 */
import type { FieldError } from "@moat/common";

/** Process exit statuses of `moat`; documented in docs/cli.md, so scripts may rely on them. */
export const ExitCode = {
  ok: 0,
  failure: 1,
  usage: 2,
  unauthenticated: 3,
  permissionDenied: 4,
  notFound: 5,
  conflict: 6,
  unreachable: 7,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** Error codes the CLI raises itself; codes from the API pass through unchanged. */
export const CliErrorCode = {
  usage: "usage",
  notLoggedIn: "not_logged_in",
  /** The stored access token (from a password or single sign-on login) has expired or was refused. */
  sessionExpired: "session_expired",
  /**
   * Single sign-on did not complete at the identity provider: it refused the login, the browser came
   * back with another login's state, or nobody answered in time.
   */
  ssoFailed: "sso_failed",
  unreachable: "unreachable",
  unexpectedResponse: "unexpected_response",
  configInvalid: "config_invalid",
  confirmationRequired: "confirmation_required",
  aborted: "aborted",
  /** Local policy files that do not parse, validate or compile; nothing was sent anywhere. */
  policyInvalid: "policy_invalid",
  /** `moat policy test`: at least one of the policies' own test cases failed. */
  testsFailed: "tests_failed",
} as const;
export type CliErrorCode = (typeof CliErrorCode)[keyof typeof CliErrorCode];

// Keyed by string, not by a closed union: a newer control plane may send codes this CLI does not
// know yet, and those must still fail (status 1) rather than crash the lookup.
const exitCodeByCode: Readonly<Record<string, ExitCode>> = {
  usage: ExitCode.usage,
  confirmation_required: ExitCode.usage,
  // The control plane rejected what the user typed (e.g. an agent name): a usage error too.
  validation_failed: ExitCode.usage,
  bad_request: ExitCode.usage,
  policy_invalid: ExitCode.usage,
  not_logged_in: ExitCode.unauthenticated,
  session_expired: ExitCode.unauthenticated,
  sso_failed: ExitCode.unauthenticated,
  unauthenticated: ExitCode.unauthenticated,
  permission_denied: ExitCode.permissionDenied,
  identity_not_linked: ExitCode.permissionDenied,
  not_found: ExitCode.notFound,
  conflict: ExitCode.conflict,
  unreachable: ExitCode.unreachable,
  unavailable: ExitCode.unreachable,
};

/** The exit status for an error code (1 for codes without a dedicated status). */
export function exitCodeFor(code: string): ExitCode {
  return exitCodeByCode[code] ?? ExitCode.failure;
}

/** RFC 9457 problem details, as the control plane sends them (and as `--json` prints CLI errors). */
export interface Problem {
  type: string;
  title: string;
  status?: number;
  code: string;
  detail: string;
  instance?: string;
  errors?: FieldError[];
}

const localTitles: Record<CliErrorCode, string> = {
  usage: "Usage error",
  not_logged_in: "Not logged in",
  session_expired: "Session expired",
  sso_failed: "Single sign-on failed",
  unreachable: "Control plane unreachable",
  unexpected_response: "Unexpected response",
  config_invalid: "Configuration invalid",
  confirmation_required: "Confirmation required",
  aborted: "Aborted",
  policy_invalid: "Invalid policy files",
  tests_failed: "Policy tests failed",
};

/** Optional parts of a `CliError`. */
export interface CliErrorOptions {
  fields?: FieldError[];
  /** One more line telling the user what to do next. */
  hint?: string;
  /** The problem document exactly as the API sent it, reprinted verbatim under `--json`. */
  problem?: Problem;
  cause?: unknown;
}

/** A failure to report to the user: `message` is the detail line and must never contain a secret. */
export class CliError extends Error {
  readonly code: string;
  readonly exitCode: ExitCode;
  readonly fields: FieldError[];
  readonly hint: string | undefined;
  readonly problem: Problem | undefined;

  constructor(code: string, detail: string, options: CliErrorOptions = {}) {
    super(detail, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "CliError";
    this.code = code;
    this.exitCode = exitCodeFor(code);
    this.fields = options.fields ?? [];
    this.hint = options.hint;
    this.problem = options.problem;
  }

  /** The problem document for `--json`: the API's own, or one describing the CLI's error. */
  toProblem(): Problem {
    if (this.problem) return this.problem;
    return {
      type: `urn:moat:cli:${this.code}`,
      title: (localTitles as Record<string, string>)[this.code] ?? "Error",
      code: this.code,
      detail: this.message,
      ...(this.fields.length > 0 ? { errors: this.fields } : {}),
    };
  }
}

/** Builds the error for an API problem response. */
export function errorFromProblem(problem: Problem, hint?: string): CliError {
  return new CliError(problem.code, problem.detail, {
    problem,
    ...(problem.errors ? { fields: problem.errors } : {}),
    ...(hint ? { hint } : {}),
  });
}

/** The "you must log in first" error, naming the server when it is known. */
export function notLoggedIn(server?: string, hint?: string): CliError {
  const where = server ? ` to ${server}` : "";
  return new CliError(
    CliErrorCode.notLoggedIn,
    `not logged in${where}: run \`moat login --server ${server ?? "URL"}\``,
    {
      ...(hint ? { hint } : {}),
    },
  );
}

/** How the expired session was opened, so the hint repeats the same login. */
export interface SessionLogin {
  email?: string;
  /** Opened with single sign-on (`moat login --sso`) rather than a password. */
  sso?: boolean;
}

/**
 * The "log in again" error of an access token from a password or single sign-on login: expired by
 * its stored expiry (checked before sending it), or refused by the control plane (expired, revoked,
 * user disabled).
 */
export function sessionExpired(server?: string, login: SessionLogin = {}, cause?: unknown): CliError {
  const how = login.sso ? "--sso" : `--email ${login.email ?? "EMAIL"}`;
  return new CliError(CliErrorCode.sessionExpired, "your session expired: run moat login again", {
    hint: `\`moat login --server ${server ?? "URL"} ${how}\``,
    ...(cause === undefined ? {} : { cause }),
  });
}
