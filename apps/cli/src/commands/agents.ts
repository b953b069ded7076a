/**
 * `moat agents ...`: create (with its one-time enrolment token and how to use it), list, get,
 * issue a new token, delete. Agents are named on the command line by name or id; `resolveAgent`
 * turns that into an agent by listing them, since the API addresses agents by id only.
 */
import type { Command } from "commander";
import type { Agent, ApiClient, CreatedAgent, EnrolmentToken } from "../api-client.js";
import type { CommandContext } from "../context.js";
import { CliError } from "../errors.js";
import { confirmDeletion, type CliIo } from "../io.js";
import { clean, formatFields, formatTable, relativeTime, timestamp, type Output } from "../output.js";

/** Finds an agent by exact id, else by exact name; unknown is a `not_found` error (exit 5). */
export async function resolveAgent(client: Pick<ApiClient, "listAgents">, ref: string): Promise<Agent> {
  const agents = await client.listAgents();
  // Ids first: an id is unambiguous, while a name could in theory look like another agent's id.
  const agent = agents.find((a) => a.id === ref) ?? agents.find((a) => a.name === ref);
  if (!agent) {
    throw new CliError("not_found", `no agent named or with id "${clean(ref)}"`, {
      hint: "`moat agents list` shows the agents",
    });
  }
  return agent;
}

/** How to start an agent with a token: the command and a minimal agent.yaml, indented for display. */
export function agentRunInstructions(token: string): string {
  return [
    "Next, on the machine next to the resources it will protect, start the agent with the token:",
    "",
    `  MOAT_AGENT_ENROLMENT_TOKEN=${token} moat-agent --config agent.yaml`,
    "",
    "with a minimal agent.yaml (the token carries the control plane's address and CA fingerprint):",
    "",
    "  dataDir: /var/lib/moat-agent   # keeps the agent's credential once enrolled",
    "  resources: []",
    "  # resources:",
    "  #   - name: orders-db",
    "  #     type: postgres            # postgres | ssh | kubernetes | http",
    "  #     listen: 0.0.0.0:15432     # where users connect through the agent",
    "  #     labels: { env: prod }",
    "",
    "The token works once; after enrolling, the agent uses the credential saved in dataDir.",
  ].join("\n");
}

/** The agent commands over narrow dependencies. */
export function createAgentCommands(deps: {
  client: Pick<ApiClient, "listAgents" | "createAgent" | "issueEnrolmentToken" | "deleteAgent">;
  out: Output;
  io: Pick<CliIo, "stdin" | "stderr">;
}) {
  const { client, out } = deps;

  function printToken(token: EnrolmentToken): void {
    const now = out.now();
    out.text(
      `Enrolment token (shown once; valid until ${clean(token.expiresAt)}, ${relativeTime(token.expiresAt, now)}):`,
    );
    out.text("");
    out.text(`  ${token.enrolmentToken}`);
    out.text("");
    out.text(agentRunInstructions(token.enrolmentToken));
  }

  return {
    async create(name: string, options: { description?: string }): Promise<CreatedAgent> {
      const created = await client.createAgent({
        name,
        ...(options.description !== undefined ? { description: options.description } : {}),
      });
      if (out.json) out.data(created);
      else {
        out.text(`Created agent ${clean(created.agent.name)} (id ${clean(created.agent.id)}).`);
        out.text("");
        printToken(created);
      }
      return created;
    },

    async list(): Promise<Agent[]> {
      const agents = await client.listAgents();
      if (out.json) {
        out.data({ items: agents });
        return agents;
      }
      if (agents.length === 0) {
        out.text("No agents yet. Create one with `moat agents create NAME`.");
        return agents;
      }
      const now = out.now();
      const rows = [...agents]
        .sort((a, b) => a.name.localeCompare(b.name))
        .map((a) => [
          clean(a.name),
          clean(a.id),
          a.state,
          clean(a.version),
          clean(a.hostname),
          relativeTime(a.lastSeenAt, now),
          clean(a.bundleVersion),
        ]);
      out.text(formatTable(["NAME", "ID", "STATE", "VERSION", "HOSTNAME", "LAST SEEN", "BUNDLE"], rows));
      return agents;
    },

    async get(ref: string): Promise<Agent> {
      const agent = await resolveAgent(client, ref);
      if (out.json) {
        out.data(agent);
        return agent;
      }
      const now = out.now();
      out.text(
        formatFields([
          ["Name", clean(agent.name)],
          ["ID", clean(agent.id)],
          ["Description", clean(agent.description)],
          ["State", agent.state],
          ["Connected to", clean(agent.connectedTo)],
          ["Version", clean(agent.version)],
          ["Hostname", clean(agent.hostname)],
          [
            "Bundle",
            clean(agent.bundleVersion) +
              (agent.policyRevision && agent.policyRevision !== "0"
                ? ` (policy revision ${clean(agent.policyRevision)})`
                : ""),
          ],
          ...(agent.bundleError ? [["Bundle error", clean(agent.bundleError)] as [string, string]] : []),
          ["Created", timestamp(agent.createdAt, now)],
          ["Enrolled", timestamp(agent.enrolledAt, now)],
          ["Connected at", timestamp(agent.connectedAt, now)],
          ["Last seen", timestamp(agent.lastSeenAt, now)],
        ]),
      );
      return agent;
    },

    async token(ref: string): Promise<CreatedAgent> {
      const agent = await resolveAgent(client, ref);
      const token = await client.issueEnrolmentToken(agent.id);
      const result = { agent, ...token };
      if (out.json) out.data(result);
      else {
        out.text(
          `New enrolment token for agent ${clean(agent.name)} (id ${clean(agent.id)}); any earlier token stops working.`,
        );
        if (agent.state !== "pending") out.text("Enrolling with it replaces the agent's current credential.");
        out.text("");
        printToken(token);
      }
      return result;
    },

    async delete(ref: string, options: { yes?: boolean }): Promise<Agent> {
      const agent = await resolveAgent(client, ref);
      await confirmDeletion(deps.io, {
        ...options,
        what: `agent "${clean(agent.name)}"`,
        question: `Delete agent ${clean(agent.name)} (id ${agent.id})? Its stream is cut and its credential stops working.`,
      });
      await client.deleteAgent(agent.id);
      if (out.json) out.data({ deleted: true, agent });
      else
        out.text(
          `Deleted agent ${clean(agent.name)} (id ${clean(agent.id)}): its stream is cut and its credential no longer works.`,
        );
      return agent;
    },
  };
}

/** Adds `agents` and its subcommands to the program. */
export function registerAgentCommands(program: Command, context: CommandContext): void {
  const commands = (command: Command) => {
    const session = context.connect(command);
    return createAgentCommands({ client: session.client, out: session.out, io: context.io });
  };
  const agents = program.command("agents").description("create, inspect and remove agents");

  agents
    .command("create")
    .description("create an agent and print its one-time enrolment token")
    .argument("<name>", "lowercase letters, digits and dashes, e.g. edge-1")
    .option("--description <text>", "free text shown in `moat agents get`")
    .action(async (name: string, options: { description?: string }, command: Command) => {
      await commands(command).create(name, options);
    });

  agents
    .command("list")
    .alias("ls")
    .description("list agents with their state, version and last heartbeat")
    .action(async (_options: unknown, command: Command) => {
      await commands(command).list();
    });

  agents
    .command("get")
    .description("show one agent")
    .argument("<agent>", "agent name or id")
    .action(async (ref: string, _options: unknown, command: Command) => {
      await commands(command).get(ref);
    });

  agents
    .command("token")
    .description("issue a new one-time enrolment token (for a lost token, or to re-enrol an agent)")
    .argument("<agent>", "agent name or id")
    .action(async (ref: string, _options: unknown, command: Command) => {
      await commands(command).token(ref);
    });

  agents
    .command("delete")
    .alias("rm")
    .description("revoke and remove an agent (asks for confirmation unless --yes)")
    .argument("<agent>", "agent name or id")
    .option("-y, --yes", "do not ask for confirmation (required when stdin is not a terminal)")
    .action(async (ref: string, options: { yes?: boolean }, command: Command) => {
      await commands(command).delete(ref, options);
    });
}
