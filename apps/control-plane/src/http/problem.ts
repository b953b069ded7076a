/**
 * RFC 9457 problem+json responses. Every error leaves the REST API through `toProblem`: a stable
 * `code`, the HTTP status from the code table, a human `detail`, and field-level `errors` for
 * validation failures. Causes and stack traces stay in the logs.
 */
import { AppError, httpStatusByCode, isAppError, type ErrorCode, type FieldError } from "@moat/common";
import type { FastifyError } from "fastify";

export interface Problem {
  type: string;
  title: string;
  status: number;
  code: ErrorCode;
  detail: string;
  instance?: string;
  errors?: FieldError[];
}

const TITLES: Record<ErrorCode, string> = {
  bad_request: "Bad request",
  validation_failed: "Validation failed",
  unauthenticated: "Authentication required",
  permission_denied: "Permission denied",
  not_found: "Not found",
  conflict: "Conflict",
  enrolment_token_invalid: "Enrolment token invalid",
  agent_revoked: "Agent revoked",
  identity_not_linked: "Identity not linked",
  bundle_too_large: "Policy bundle too large",
  payload_too_large: "Payload too large",
  unsupported_media_type: "Unsupported media type",
  rate_limited: "Too many requests",
  unavailable: "Service unavailable",
  internal: "Internal error",
};

export function problem(error: AppError, instance?: string): Problem {
  return {
    type: `urn:moat:problem:${error.code}`,
    title: TITLES[error.code],
    status: httpStatusByCode[error.code],
    code: error.code,
    detail: error.message,
    ...(instance ? { instance } : {}),
    ...(error.fields ? { errors: error.fields } : {}),
  };
}

interface AjvError {
  instancePath?: string;
  message?: string;
  keyword?: string;
  params?: Record<string, unknown>;
}

/** Field errors from Fastify/Ajv validation output, as JSON pointers into the request part. */
function fieldErrors(context: string, validation: AjvError[]): FieldError[] {
  return validation.map((v) => {
    let path = v.instancePath ?? "";
    if (v.keyword === "required" && typeof v.params?.missingProperty === "string") {
      path += `/${v.params.missingProperty}`;
    }
    if (v.keyword === "additionalProperties" && typeof v.params?.additionalProperty === "string") {
      path += `/${v.params.additionalProperty}`;
      return { field: `${context}${path}`, message: "unknown field" };
    }
    return { field: `${context}${path}`, message: v.message ?? "is invalid" };
  });
}

/** Maps any error thrown in a request to an AppError (unknown errors become "internal"). */
export function toAppError(error: unknown): AppError {
  if (isAppError(error)) return error;
  const fe = error as FastifyError & { validationContext?: string };
  if (Array.isArray(fe.validation)) {
    const fields = fieldErrors(fe.validationContext ?? "body", fe.validation as AjvError[]);
    return new AppError("validation_failed", "the request is invalid: see errors", { fields, cause: error });
  }
  switch (fe.statusCode) {
    case 400:
      return new AppError(
        "bad_request",
        fe.code === "FST_ERR_CTP_EMPTY_JSON_BODY" ? "the JSON body is empty" : "the request body is not valid JSON",
        { cause: error },
      );
    case 404:
      return new AppError("not_found", "no such route", { cause: error });
    case 413:
      return new AppError("payload_too_large", "the request body is too large", { cause: error });
    case 415:
      return new AppError("unsupported_media_type", "send the body as application/json", { cause: error });
    default:
      return new AppError("internal", "internal error", { cause: error });
  }
}
