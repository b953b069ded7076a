/** @moat/common: error model, bearer secrets, logger and small pure helpers shared by every app. */
export * from "./errors.js";
export * from "./secrets.js";
export * from "./backoff.js";
export * from "./logger.js";
export * from "./enrolment.js";
export * from "./config.js";
export * from "./ulid.js";
