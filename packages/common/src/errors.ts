/**
 * One error model for every Moat surface. An AppError carries a stable, closed `code`; the tables
 * below map it to an HTTP status (REST problem+json) and a gRPC status. `cause` is kept for logs
 * and is never sent to a client.
 */

/** The closed set of stable error codes clients may rely on. */
export const ErrorCode = {
  badRequest: "bad_request",
  validationFailed: "validation_failed",
  unauthenticated: "unauthenticated",
  permissionDenied: "permission_denied",
  notFound: "not_found",
  conflict: "conflict",
  enrolmentTokenInvalid: "enrolment_token_invalid",
  agentRevoked: "agent_revoked",
  /** A single sign-on identity that is not linked to the existing Moat user with its email. */
  identityNotLinked: "identity_not_linked",
  /** A change that would make some agent's policy bundle larger than the agent channel carries. */
  bundleTooLarge: "bundle_too_large",
  payloadTooLarge: "payload_too_large",
  unsupportedMediaType: "unsupported_media_type",
  rateLimited: "rate_limited",
  unavailable: "unavailable",
  internal: "internal",
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** HTTP status per error code. */
export const httpStatusByCode: Record<ErrorCode, number> = {
  bad_request: 400,
  validation_failed: 400,
  unauthenticated: 401,
  permission_denied: 403,
  not_found: 404,
  conflict: 409,
  enrolment_token_invalid: 401,
  agent_revoked: 403,
  identity_not_linked: 403,
  bundle_too_large: 422,
  payload_too_large: 413,
  unsupported_media_type: 415,
  rate_limited: 429,
  unavailable: 503,
  internal: 500,
};

/** gRPC status numbers (google.rpc.Code) per error code. */
export const grpcStatusByCode: Record<ErrorCode, number> = {
  bad_request: 3, // INVALID_ARGUMENT
  validation_failed: 3, // INVALID_ARGUMENT
  unauthenticated: 16, // UNAUTHENTICATED
  permission_denied: 7, // PERMISSION_DENIED
  not_found: 5, // NOT_FOUND
  conflict: 6, // ALREADY_EXISTS
  enrolment_token_invalid: 16, // UNAUTHENTICATED
  agent_revoked: 7, // PERMISSION_DENIED
  identity_not_linked: 7, // PERMISSION_DENIED
  bundle_too_large: 8, // RESOURCE_EXHAUSTED
  payload_too_large: 8, // RESOURCE_EXHAUSTED
  unsupported_media_type: 3, // INVALID_ARGUMENT
  rate_limited: 8, // RESOURCE_EXHAUSTED
  unavailable: 14, // UNAVAILABLE
  internal: 13, // INTERNAL
};

/** A field-level validation problem, pointing at the offending field by JSON pointer. */
export interface FieldError {
  field: string;
  message: string;
}

export interface AppErrorOptions {
  cause?: unknown;
  fields?: FieldError[];
}

/** The one error class of Moat. The message is safe to show to the caller. */
export class AppError extends Error {
  readonly code: ErrorCode;
  readonly fields: FieldError[] | undefined;

  constructor(code: ErrorCode, message: string, options: AppErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "AppError";
    this.code = code;
    this.fields = options.fields;
  }

  get httpStatus(): number {
    return httpStatusByCode[this.code];
  }

  get grpcStatus(): number {
    return grpcStatusByCode[this.code];
  }
}

/** True when `value` is an AppError (also across duplicated module instances). */
export function isAppError(value: unknown): value is AppError {
  return (
    value instanceof AppError ||
    (typeof value === "object" &&
      value !== null &&
      (value as { name?: unknown }).name === "AppError" &&
      typeof (value as { code?: unknown }).code === "string")
  );
}
