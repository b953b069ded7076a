/**
 * `moat resources list`: what the agents announce they protect. Filters by type and by agent (name
 * or id). Every role may list resources but only some may list agents, so an agent name is matched
 * against the resources themselves when the caller may not resolve it through the agents API.
 */
import { Option, type Command } from "commander";
import { RESOURCE_TYPES, type ApiClient, type Resource, type ResourceType } from "../api-client.js";
import type { CommandContext } from "../context.js";
import { CliError } from "../errors.js";
import { clean, formatTable, relativeTime, type Output } from "../output.js";
import { resolveAgent } from "./agents.js";

/** The resource commands over narrow dependencies. */
export function createResourceCommands(deps: { client: Pick<ApiClient, "listAgents" | "listResources">; out: Output }) {
  const { client, out } = deps;

  async function fetchResources(options: { type?: ResourceType; agent?: string }): Promise<Resource[]> {
    const type = options.type ? { type: options.type } : {};
    if (!options.agent) return client.listResources(type);
    let agentId: string;
    try {
      agentId = (await resolveAgent(client, options.agent)).id;
    } catch (error) {
      if (!(error instanceof CliError) || error.code !== "permission_denied") throw error;
      const ref = options.agent;
      return (await client.listResources(type)).filter((r) => r.agentId === ref || r.agentName === ref);
    }
    return client.listResources({ ...type, agentId });
  }

  return {
    async list(options: { type?: ResourceType; agent?: string }): Promise<Resource[]> {
      const resources = await fetchResources(options);
      if (out.json) {
        out.data({ items: resources });
        return resources;
      }
      if (resources.length === 0) {
        out.text("No resources. Agents announce the resources listed in their agent.yaml when they connect.");
        return resources;
      }
      const now = out.now();
      const rows = resources.map((r) => [
        clean(r.name),
        r.type,
        clean(r.agentName || r.agentId),
        clean(r.listenAddress),
        clean(
          Object.entries(r.labels)
            .map(([k, v]) => `${k}=${v}`)
            .join(","),
        ),
        relativeTime(r.updatedAt, now),
      ]);
      out.text(formatTable(["NAME", "TYPE", "AGENT", "LISTEN", "LABELS", "UPDATED"], rows));
      return resources;
    },
  };
}

/** Adds `resources` and its subcommands to the program. */
export function registerResourceCommands(program: Command, context: CommandContext): void {
  const resources = program.command("resources").description("list the resources agents announce");
  resources
    .command("list")
    .alias("ls")
    .description("list resources, optionally of one type or one agent")
    .addOption(new Option("--type <type>", "only resources of this type").choices(RESOURCE_TYPES))
    .option("--agent <agent>", "only resources of this agent (name or id)")
    .action(async (options: { type?: ResourceType; agent?: string }, command: Command) => {
      const session = context.connect(command);
      await createResourceCommands({ client: session.client, out: session.out }).list(options);
    });
}
