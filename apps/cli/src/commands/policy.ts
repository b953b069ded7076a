/**
 * `moat policy ...`: policy as code. `apply` makes the control plane's policies match local files
 * (with a field-level diff in dry runs), `test` runs the policies' own test cases locally with the
 * agents' evaluator, `simulate` asks the control plane for a verdict, and `list`, `get`, `delete`
 * manage what is stored. Local files are read and checked before any request is made.
 */
import { InvalidArgumentError, Option, type Command } from "commander";
import { Document as YamlDocument, isScalar, visit } from "yaml";
import { runPolicyTests, type Obligations, type PolicyTestResult } from "@moat/policy";
import {
  RESOURCE_TYPES,
  type ApiClient,
  type ApplyResult,
  type Policy,
  type ResourceType,
  type SimulateRequest,
  type SimulateVerdict,
} from "../api-client.js";
import type { CommandContext } from "../context.js";
import { CliError, CliErrorCode } from "../errors.js";
import { confirmDeletion, type CliIo } from "../io.js";
import { clean, formatFields, formatTable, relativeTime, type Output } from "../output.js";
import { diffDocuments, orderPolicyDocument } from "../policy-documents.js";
import { collect } from "../options.js";
import { loadPolicyFiles, type PolicySet } from "../policy-files.js";

/** Formats of `moat policy get`. */
export const POLICY_FORMATS = ["yaml", "json"] as const;
export type PolicyFormat = (typeof POLICY_FORMATS)[number];

/**
 * A policy document as YAML, keys in the format's order and lists of plain values on one line
 * (`groups: [dbas]`), as people write them: what `get` prints and `apply` reads back.
 */
export function policyYaml(document: unknown): string {
  const yaml = new YamlDocument(orderPolicyDocument(document));
  visit(yaml, {
    Seq(_key, node) {
      if (node.items.every((item) => isScalar(item))) node.flow = true;
    },
  });
  // lineWidth 0: long messages stay on one line rather than being folded.
  return yaml.toString({ lineWidth: 0, flowCollectionPadding: false });
}

function plural(count: number, word: string): string {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

/** "8h", "90m", "45s": the shortest exact form of a duration. */
export function formatDuration(seconds: number): string {
  for (const [size, unit] of [
    [86_400, "d"],
    [3600, "h"],
    [60, "m"],
  ] as const) {
    if (seconds >= size && seconds % size === 0) return `${seconds / size}${unit}`;
  }
  return `${seconds}s`;
}

/** The obligations of a verdict as "label: value" pairs. */
function obligationFields(obligations: Obligations): [string, string][] {
  const fields: [string, string][] = [["record", obligations.record ? "yes" : "no"]];
  if (obligations.maxSessionSeconds !== undefined)
    fields.push(["max session", formatDuration(obligations.maxSessionSeconds)]);
  const masks = obligations.mask.map((m) =>
    [m.columns ? `columns ${m.columns.join(", ")}` : "", m.detectors ? `detectors ${m.detectors.join(", ")}` : ""]
      .filter(Boolean)
      .join(" and ")
      .concat(` (${m.style ?? "full"})`),
  );
  fields.push(["masking", masks.length === 0 ? "none" : `${plural(masks.length, "rule")}: ${masks.join("; ")}`]);
  const approvers = obligations.approvers;
  if (approvers) {
    const who = [
      approvers.users.length > 0 ? `users ${approvers.users.join(", ")}` : "",
      approvers.groups.length > 0 ? `groups ${approvers.groups.join(", ")}` : "",
    ]
      .filter(Boolean)
      .join(", ");
    fields.push(["approvers", `${who || "anyone allowed to approve"} (${plural(approvers.minApprovals, "approval")})`]);
  }
  return fields.map(([label, value]) => [label, clean(value)]);
}

/** One line per test: `PASS policy / test`, or `FAIL policy / test: expected X, got Y (rule R): message`. */
export function formatTestResult(result: PolicyTestResult): string {
  const name = clean(`${result.policy} / ${result.name}`);
  if (result.passed) return `PASS ${name}`;
  const expected = `${result.expected}${result.expectedRule ? ` by rule ${result.expectedRule}` : ""}`;
  const rule = result.verdict.rule === "" ? "default deny" : `rule ${result.verdict.rule}`;
  return `FAIL ${name}: ${clean(`expected ${expected}, got ${result.verdict.effect} (${rule}): ${result.verdict.message}`)}`;
}

/**
 * Runs the `spec.tests` of every policy in `set` against the whole set, locally. Prints a line per
 * test and a summary (or the results as JSON); a failure is a `tests_failed` error (exit 1).
 */
export function testPolicies(set: PolicySet, out: Output): PolicyTestResult[] {
  const results = runPolicyTests(set.documents, set.compiled, out.now().getTime());
  const failed = results.filter((r) => !r.passed).length;
  if (out.json) out.data(results);
  else {
    for (const result of results) out.text(formatTestResult(result));
    out.text(`${results.length - failed} passed, ${failed} failed`);
    if (results.length === 0) out.note("note: these policies carry no test cases (spec.tests)");
  }
  if (failed > 0) {
    throw new CliError(CliErrorCode.testsFailed, `${failed} of ${plural(results.length, "policy test")} failed`);
  }
  return results;
}

/** Options of `moat policy simulate`, as commander parses them. */
export interface SimulateOptions {
  user: string;
  group?: string[];
  serviceAccount?: boolean;
  resource: string;
  type?: ResourceType;
  label?: Record<string, string>;
  action: string;
  table?: string[];
  command?: string;
  sourceIp?: string;
  time?: string;
  reason?: string;
}

/** The policy commands that talk to the control plane, over narrow dependencies. */
export function createPolicyCommands(deps: {
  client: Pick<ApiClient, "listPolicies" | "getPolicy" | "deletePolicy" | "applyPolicies" | "simulatePolicy">;
  out: Output;
  io: Pick<CliIo, "stdin" | "stderr">;
}) {
  const { client, out } = deps;

  /** One stored policy; an unknown name is `not_found` (exit 5) with a pointer to `policy list`. */
  async function fetchPolicy(name: string): Promise<Policy> {
    try {
      return await client.getPolicy(name);
    } catch (error) {
      if (!(error instanceof CliError) || error.code !== "not_found" || error.hint) throw error;
      throw new CliError(error.code, error.message, {
        fields: error.fields,
        ...(error.problem ? { problem: error.problem } : {}),
        hint: "`moat policy list` shows the stored policies",
        cause: error,
      });
    }
  }

  /** For a dry run: what would change in each updated policy, from the stored document to the file's. */
  async function changes(set: PolicySet, updated: readonly string[]): Promise<Map<string, string[]>> {
    const byName = new Map(set.documents.map((d) => [d.metadata.name, d]));
    const diffs = new Map<string, string[]>();
    for (const name of updated) {
      try {
        diffs.set(name, diffDocuments((await client.getPolicy(name)).document, byName.get(name)));
      } catch (error) {
        // Deleted since the dry run answered: nothing to compare with.
        if (!(error instanceof CliError) || error.code !== "not_found") throw error;
      }
    }
    return diffs;
  }

  return {
    async apply(set: PolicySet, options: { prune?: boolean; dryRun?: boolean }): Promise<ApplyResult> {
      const result = await client.applyPolicies({
        documents: set.documents,
        prune: options.prune === true,
        dryRun: options.dryRun === true,
      });
      if (out.json) {
        out.data(result);
        return result;
      }
      const diffs = result.dryRun ? await changes(set, result.updated) : new Map<string, string[]>();
      for (const name of result.created) out.text(`+ created ${clean(name)}`);
      for (const name of result.updated) {
        out.text(`~ updated ${clean(name)}`);
        for (const line of diffs.get(name) ?? []) out.text(`    ${line}`);
      }
      for (const name of result.deleted) out.text(`- deleted ${clean(name)}`);
      for (const name of result.unchanged) out.text(`= unchanged ${clean(name)}`);
      const counts = `${result.created.length} created, ${result.updated.length} updated, ${result.deleted.length} deleted, ${result.unchanged.length} unchanged`;
      if (result.dryRun)
        out.text(`dry run: nothing changed (still revision ${clean(result.revision)}; would be ${counts})`);
      else out.text(`revision ${clean(result.revision)} (${counts})`);
      return result;
    },

    async list(): Promise<Policy[]> {
      const policies = await client.listPolicies();
      if (out.json) {
        out.data({ items: policies });
        return policies;
      }
      if (policies.length === 0) {
        out.text("No policies yet. Apply some with `moat policy apply -f DIR`.");
        return policies;
      }
      const now = out.now();
      const rows = [...policies]
        .sort((a, b) => a.name.localeCompare(b.name))
        .map((p) => [
          clean(p.name),
          clean(p.revision),
          String(p.document.spec?.rules?.length ?? 0),
          String(p.document.spec?.tests?.length ?? 0),
          clean(p.updatedBy),
          relativeTime(p.updatedAt, now),
          clean(p.document.metadata?.description),
        ]);
      out.text(formatTable(["NAME", "REVISION", "RULES", "TESTS", "UPDATED BY", "UPDATED", "DESCRIPTION"], rows));
      return policies;
    },

    async get(name: string, format: PolicyFormat): Promise<Policy> {
      const policy = await fetchPolicy(name);
      if (out.json) out.data(policy);
      else if (format === "json") out.text(JSON.stringify(orderPolicyDocument(policy.document), null, 2));
      else out.text(policyYaml(policy.document).trimEnd());
      return policy;
    },

    async delete(name: string, options: { yes?: boolean }): Promise<Policy> {
      // Fetched first, so an unknown name exits 5 before anyone is asked anything.
      const policy = await fetchPolicy(name);
      await confirmDeletion(deps.io, {
        ...options,
        what: `policy "${clean(policy.name)}"`,
        question: `Delete policy ${clean(policy.name)} (revision ${clean(policy.revision)})? Agents stop enforcing it.`,
      });
      await client.deletePolicy(policy.name);
      if (out.json) out.data({ deleted: true, policy });
      else out.text(`Deleted policy ${clean(policy.name)}: agents stop enforcing it with their next bundle.`);
      return policy;
    },

    async simulate(options: SimulateOptions): Promise<SimulateVerdict> {
      const request: SimulateRequest = {
        user: options.user,
        resource: options.resource,
        action: options.action,
        ...(options.group ? { groups: options.group } : {}),
        ...(options.serviceAccount ? { serviceAccount: true } : {}),
        ...(options.type ? { resourceType: options.type } : {}),
        ...(options.label ? { labels: options.label } : {}),
        ...(options.table ? { tables: options.table } : {}),
        ...(options.command !== undefined ? { command: options.command } : {}),
        ...(options.sourceIp !== undefined ? { sourceIp: options.sourceIp } : {}),
        ...(options.time !== undefined ? { time: options.time } : {}),
        ...(options.reason !== undefined ? { reason: options.reason } : {}),
      };
      const verdict = await client.simulatePolicy(request);
      if (out.json) {
        out.data(verdict);
        return verdict;
      }
      const rule = verdict.rule === "" ? "(default deny)" : clean(verdict.rule);
      out.text(`${verdict.effect.toUpperCase()}  ${rule}  ${clean(verdict.message)}`);
      out.text("");
      if (verdict.matched.length === 0) out.text("Matched rules: none, so the default deny applies.");
      else {
        const rows = verdict.matched.map((m) => [
          m.effect,
          clean(m.rule),
          m.table === undefined ? "-" : clean(m.table),
        ]);
        out.text("Matched rules:");
        out.text(indent(formatTable(["EFFECT", "RULE", "TABLE"], rows)));
      }
      out.text("");
      out.text("Obligations:");
      out.text(indent(formatFields(obligationFields(verdict.obligations))));
      out.text("");
      out.text(`Policy revision ${clean(verdict.revision)}.`);
      return verdict;
    },
  };
}

function indent(text: string): string {
  return text
    .split("\n")
    .map((line) => `  ${line}`)
    .join("\n");
}

/** `--label k=v`, repeatable, into a record. */
function collectLabel(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const eq = value.indexOf("=");
  if (eq <= 0) throw new InvalidArgumentError("expected KEY=VALUE");
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

function parseTime(value: string): string {
  if (Number.isNaN(Date.parse(value)))
    throw new InvalidArgumentError("expected an ISO 8601 date-time, e.g. 2026-11-25T23:00:00Z");
  return value;
}

const filesOption = () =>
  new Option(
    "-f, --file <paths...>",
    "policy files, or directories of *.yaml, *.yml and *.json files (repeatable)",
  ).makeOptionMandatory();

/** Adds `policy` and its subcommands to the program. */
export function registerPolicyCommands(program: Command, context: CommandContext): void {
  const commands = (command: Command) => {
    const session = context.connect(command);
    return createPolicyCommands({ client: session.client, out: session.out, io: context.io });
  };
  const policy = program
    .command("policy")
    .alias("policies")
    .description("apply, test, simulate and manage policies (policy as code)");

  policy
    .command("apply")
    .description("make the control plane's policies match files: create, update (and with --prune delete)")
    .addOption(filesOption())
    .option("--prune", "also delete stored policies that are not in the files")
    .option("--dry-run", "only show what would change, with a field-level diff of updated policies")
    .action(async (options: { file: string[]; prune?: boolean; dryRun?: boolean }, command: Command) => {
      // Checked before connecting: broken files never cost a request (nor need a login).
      const set = loadPolicyFiles(options.file);
      await commands(command).apply(set, options);
    });

  policy
    .command("test")
    .description("run the policies' own test cases (spec.tests) locally; no control plane needed")
    .addOption(filesOption())
    .action((options: { file: string[] }, command: Command) => {
      testPolicies(loadPolicyFiles(options.file), context.output(command));
    });

  policy
    .command("simulate")
    .description("ask the control plane for the verdict on a request, with the rules that matched")
    .requiredOption("--user <user>", "who asks (a member may only simulate themselves)")
    .option("--group <group>", "a group of the user (repeatable)", collect)
    .option("--service-account", "the user is a service account")
    .requiredOption("--resource <name>", "resource name")
    .addOption(
      new Option("--type <type>", "resource type, to simulate a resource no agent announces").choices(RESOURCE_TYPES),
    )
    .option("--label <key=value>", "resource label (repeatable; added to an announced resource's labels)", collectLabel)
    .requiredOption("--action <action>", "e.g. connect, db:read, db:write, ssh:shell, k8s:get")
    .option("--table <schema.table>", "a table the statement touches (repeatable)", collect)
    .option("--command <command>", "the command line, for ssh:exec")
    .option("--source-ip <ip>", "the client's address")
    .option("--time <iso>", "when (ISO 8601 with an offset; default now)", parseTime)
    .option("--reason <text>", "the reason the user gives")
    .action(async (options: SimulateOptions, command: Command) => {
      await commands(command).simulate(options);
    });

  policy
    .command("list")
    .alias("ls")
    .description("list stored policies")
    .action(async (_options: unknown, command: Command) => {
      await commands(command).list();
    });

  policy
    .command("get")
    .description("print a stored policy document (YAML by default; --json prints the API's record)")
    .argument("<name>", "policy name")
    .addOption(new Option("-o, --output <format>", "document format").choices(POLICY_FORMATS).default("yaml"))
    .action(async (name: string, options: { output: PolicyFormat }, command: Command) => {
      await commands(command).get(name, options.output);
    });

  policy
    .command("delete")
    .alias("rm")
    .description("delete a stored policy (asks for confirmation unless --yes)")
    .argument("<name>", "policy name")
    .option("-y, --yes", "do not ask for confirmation (required when stdin is not a terminal)")
    .action(async (name: string, options: { yes?: boolean }, command: Command) => {
      await commands(command).delete(name, options);
    });
}
