/**
 * The structured (pino, JSON) logger every Moat process uses, with secrets redacted by key name.
 * Redaction is a backstop: code must not put secrets into log fields in the first place.
 */
import { pino, type DestinationStream, type Logger, type LoggerOptions } from "pino";

export type { Logger } from "pino";

/** Field names whose values never reach a log line, wherever they sit (two levels deep). */
export const REDACTED_KEYS = [
  "authorization",
  "password",
  "token",
  "secret",
  "credential",
  "apiKey",
  "api_key",
  "enrolmentToken",
  "enrolment_token",
  "privateKey",
  "cookie",
];

function redactPaths(): string[] {
  const paths: string[] = [];
  for (const key of REDACTED_KEYS) {
    paths.push(key, `*.${key}`, `*.*.${key}`);
  }
  paths.push('req.headers["x-api-key"]');
  return paths;
}

export interface CreateLoggerOptions {
  name: string;
  level?: string;
  destination?: DestinationStream;
}

/** Creates a JSON logger with redaction; `level` "silent" turns it off (tests). */
export function createLogger(options: CreateLoggerOptions): Logger {
  const config: LoggerOptions = {
    name: options.name,
    level: options.level ?? "info",
    redact: { paths: redactPaths(), censor: "[redacted]" },
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return options.destination ? pino(config, options.destination) : pino(config);
}
