/**
 * Policy files on disk -> checked policy documents, for `moat policy apply` and `moat policy test`.
 * Reading the files is its only I/O; parsing, validation and compilation are @moat/policy's. Every
 * problem of every file comes back in one `policy_invalid` error (exit 2), each located as
 * FILE:LINE:COL, so nothing half-checked reaches the control plane. Knows nothing of the API.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { extname, join, resolve } from "node:path";
import {
  compilePolicies,
  parsePolicyText,
  PolicyError,
  type CompiledPolicies,
  type PolicyDocument,
  type PolicyProblem,
} from "@moat/policy";
import type { FieldError } from "@moat/common";
import { isMap, isSeq, LineCounter, parseAllDocuments } from "yaml";
import { CliError, CliErrorCode } from "./errors.js";

/** Extensions of the files taken from a directory (a file named explicitly may have any). */
export const POLICY_FILE_EXTENSIONS = [".yaml", ".yml", ".json"] as const;

/** One policy file's name (as the user gave it, for messages) and text. */
export interface PolicySource {
  path: string;
  text: string;
}

/** Valid, compiled policy documents and the file each came from. */
export interface PolicySet {
  documents: PolicyDocument[];
  compiled: CompiledPolicies;
  /** `sources[i]` is the file `documents[i]` was read from. */
  sources: string[];
}

const readErrors: Record<string, string> = {
  ENOENT: "no such file or directory",
  EACCES: "permission denied",
  ENOTDIR: "not a directory",
};

function readFailure(path: string, error: unknown): CliError {
  const code = (error as NodeJS.ErrnoException).code;
  const why = (code && readErrors[code]) ?? (error as Error).message;
  return new CliError(CliErrorCode.usage, `cannot read ${path}: ${why}`, { cause: error });
}

/**
 * Files named by `paths`: a file as is, a directory as its *.yaml, *.yml and *.json files (not
 * recursive, hidden files skipped, sorted by name). A file named twice is read once.
 */
export function expandPolicyPaths(paths: readonly string[]): string[] {
  const files: string[] = [];
  const seen = new Set<string>();
  const add = (file: string) => {
    const key = resolve(file);
    if (!seen.has(key)) files.push(file);
    seen.add(key);
  };
  for (const path of paths) {
    let isDirectory: boolean;
    try {
      isDirectory = statSync(path).isDirectory();
    } catch (error) {
      throw readFailure(path, error);
    }
    if (!isDirectory) {
      add(path);
      continue;
    }
    let names: string[];
    try {
      names = readdirSync(path);
    } catch (error) {
      throw readFailure(path, error);
    }
    const found = names
      .filter((n) => !n.startsWith(".") && (POLICY_FILE_EXTENSIONS as readonly string[]).includes(extname(n)))
      .sort()
      .map((n) => join(path, n))
      .filter((file) => statSync(file).isFile());
    if (found.length === 0)
      throw new CliError(CliErrorCode.usage, `no ${POLICY_FILE_EXTENSIONS.join(", ")} files in ${path}`);
    found.forEach(add);
  }
  return files;
}

/** Reads the files `paths` name (see `expandPolicyPaths`). */
export function readPolicyFiles(paths: readonly string[]): PolicySource[] {
  return expandPolicyPaths(paths).map((path) => {
    try {
      return { path, text: readFileSync(path, "utf8") };
    } catch (error) {
      throw readFailure(path, error);
    }
  });
}

/**
 * Line and column of `field` (a dotted path like `spec.rules.0.actions`) in the `ordinal`-th policy
 * of a file, counted as `parsePolicyText` counts them: YAML documents in order, the items of a
 * top-level list one by one, empty documents skipped.
 */
function locate(text: string, ordinal: number, field: string): { line?: number; column?: number } {
  const counter = new LineCounter();
  let index = 0;
  for (const doc of parseAllDocuments(text, { lineCounter: counter })) {
    if (doc.contents === null || doc.toJS() == null) continue;
    const roots = isSeq(doc.contents) ? doc.contents.items : [doc.contents];
    for (const root of roots) {
      if (index++ !== ordinal) continue;
      let node: unknown = root;
      for (const key of field.split(".")) {
        const next = isMap(node)
          ? node.items.find((pair) => String((pair.key as { value?: unknown } | null)?.value ?? pair.key) === key)
              ?.value
          : isSeq(node)
            ? node.items[Number(key)]
            : undefined;
        if (!next) break;
        node = next;
      }
      const range = (node as { range?: [number, number, number] } | null)?.range;
      if (!range) return {};
      const pos = counter.linePos(range[0]);
      return { line: pos.line, column: pos.col };
    }
  }
  return {};
}

/** `FILE:LINE:COL: field` (or `FILE: field` without a position), as compilers print them. */
function located(path: string, problem: Pick<PolicyProblem, "field" | "line" | "column">): string {
  const at = problem.line ? `:${problem.line}:${problem.column ?? 1}` : "";
  return `${path}${at}: ${problem.field}`;
}

function invalid(fields: FieldError[]): CliError {
  const count = fields.length === 1 ? "1 problem" : `${fields.length} problems`;
  return new CliError(CliErrorCode.policyInvalid, `the policy files have ${count}`, { fields });
}

/**
 * Parses, validates and compiles the policies of `sources` as one set (so duplicate names across
 * files are caught). Throws a `policy_invalid` CliError listing every problem, a usage error when
 * there is no policy at all. Pure: `sources` carry their text.
 */
export function checkPolicySources(sources: readonly PolicySource[]): PolicySet {
  const documents: PolicyDocument[] = [];
  const origins: { source: PolicySource; ordinal: number }[] = [];
  const problems: FieldError[] = [];
  for (const source of sources) {
    try {
      parsePolicyText(source.text, source.path).forEach((document, ordinal) => {
        documents.push(document);
        origins.push({ source, ordinal });
      });
    } catch (error) {
      if (!(error instanceof PolicyError)) throw error;
      for (const p of error.problems) problems.push({ field: located(source.path, p), message: p.message });
    }
  }
  if (problems.length > 0) throw invalid(problems);
  if (documents.length === 0)
    throw new CliError(CliErrorCode.usage, `no policy documents in ${sources.map((s) => s.path).join(", ")}`);

  let compiled: CompiledPolicies;
  try {
    compiled = compilePolicies(documents);
  } catch (error) {
    if (!(error instanceof PolicyError)) throw error;
    throw invalid(
      error.problems.map((p) => {
        const origin = p.document === undefined ? undefined : origins[p.document];
        if (!origin) return { field: p.field, message: p.message };
        // Compile problems name the policy ("name: spec.rules.0.actions.0"); the path alone locates it.
        const prefix = `${documents[p.document ?? 0]?.metadata.name}: `;
        const path = p.field.startsWith(prefix) ? p.field.slice(prefix.length) : p.field;
        const position = locate(origin.source.text, origin.ordinal, path);
        return { field: located(origin.source.path, { ...position, field: p.field }), message: p.message };
      }),
    );
  }
  return { documents, compiled, sources: origins.map((o) => o.source.path) };
}

/** Reads and checks the policy files `paths` name. */
export function loadPolicyFiles(paths: readonly string[]): PolicySet {
  return checkPolicySources(readPolicyFiles(paths));
}
