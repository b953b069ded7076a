/**
 * Config loading shared by the apps: a YAML file, then environment overrides, validated once at start
 * against a TypeBox schema. Errors name the offending field ("grpc.port: must be <= 65535").
 */
import { readFileSync } from "node:fs";
import { Type, type Static, type TSchema } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import { parse as parseYaml } from "yaml";

/** Log levels every Moat process accepts (pino's, plus "silent"), default "info". */
export const LogLevelSchema = Type.Union(
  ["fatal", "error", "warn", "info", "debug", "trace", "silent"].map((l) => Type.Literal(l)),
  { default: "info" },
);

/** Thrown when config is missing or invalid; `problems` lists each field's problem. */
export class ConfigError extends Error {
  readonly problems: string[];
  constructor(source: string, problems: string[]) {
    super(`invalid configuration (${source}):\n  - ${problems.join("\n  - ")}`);
    this.name = "ConfigError";
    this.problems = problems;
  }
}

/** Reads a YAML (or JSON) config file into a plain object. */
export function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    throw new ConfigError(path, [`cannot read file: ${(error as Error).message}`]);
  }
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch (error) {
    throw new ConfigError(path, [`not valid YAML: ${(error as Error).message}`]);
  }
  if (parsed === null || parsed === undefined) return {};
  if (typeof parsed !== "object" || Array.isArray(parsed)) throw new ConfigError(path, ["top level must be a mapping"]);
  return parsed as Record<string, unknown>;
}

/** Sets `value` at a dotted path inside `target`, creating objects on the way. */
export function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const keys = path.split(".");
  let node = target;
  for (const key of keys.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== "object" || next === null || Array.isArray(next)) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[keys[keys.length - 1] as string] = value;
}

/** An environment variable override: which variable sets which dotted config path, and how to parse it. */
export interface EnvOverride {
  variable: string;
  path: string;
  type: "string" | "number" | "boolean" | "list";
}

/** Applies env overrides to `raw` (in place); unparseable values are reported as problems. */
export function applyEnvOverrides(
  raw: Record<string, unknown>,
  overrides: EnvOverride[],
  env: NodeJS.ProcessEnv,
): string[] {
  const problems: string[] = [];
  for (const o of overrides) {
    const text = env[o.variable];
    if (text === undefined || text === "") continue;
    if (o.type === "number") {
      const n = Number(text);
      if (!Number.isFinite(n)) problems.push(`${o.variable}: must be a number (for ${o.path})`);
      else setPath(raw, o.path, n);
    } else if (o.type === "boolean") {
      if (!["true", "false", "1", "0"].includes(text)) problems.push(`${o.variable}: must be true or false`);
      else setPath(raw, o.path, text === "true" || text === "1");
    } else if (o.type === "list") {
      setPath(
        raw,
        o.path,
        text
          .split(",")
          .map((s) => s.trim())
          .filter(Boolean),
      );
    } else {
      setPath(raw, o.path, text);
    }
  }
  return problems;
}

function describePath(instancePath: string): string {
  return instancePath.replace(/^\//, "").replace(/\//g, ".") || "(top level)";
}

/**
 * Fills defaults, rejects unknown fields, and validates `raw` against `schema`; returns the typed
 * config or throws ConfigError listing every problem.
 */
export function validateConfig<S extends TSchema>(schema: S, raw: unknown, source: string): Static<S> {
  const value = Value.Default(schema, Value.Clone(raw));
  const problems: string[] = [];
  for (const error of Value.Errors(schema, value)) {
    const field = describePath(error.path);
    if (error.message.startsWith("Unexpected property")) {
      problems.push(`${field}: unknown field`);
    } else {
      problems.push(`${field}: ${error.message.toLowerCase()}`);
    }
  }
  if (problems.length > 0) throw new ConfigError(source, [...new Set(problems)]);
  return value as Static<S>;
}
