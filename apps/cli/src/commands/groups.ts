/**
 * `moat groups list`: the groups users and service accounts belong to, which policies name as
 * subjects. Groups are created by giving them to users (`moat users set --group`).
 */
import type { Command } from "commander";
import type { ApiClient, Group } from "../api-client.js";
import type { CommandContext } from "../context.js";
import { clean, formatTable, type Output } from "../output.js";

/** The group commands over narrow dependencies. */
export function createGroupCommands(deps: { client: Pick<ApiClient, "listGroups">; out: Output }) {
  const { client, out } = deps;
  return {
    async list(): Promise<Group[]> {
      const groups = await client.listGroups();
      if (out.json) {
        out.data({ items: groups });
        return groups;
      }
      if (groups.length === 0) {
        out.text("No groups yet. Give users groups with `moat users create --group` or `moat users set --group`.");
        return groups;
      }
      const rows = [...groups]
        .sort((a, b) => a.name.localeCompare(b.name))
        .map((g) => [clean(g.name), String(g.members), clean(g.description)]);
      out.text(formatTable(["NAME", "MEMBERS", "DESCRIPTION"], rows));
      return groups;
    },
  };
}

/** Adds `groups` and its subcommands to the program. */
export function registerGroupCommands(program: Command, context: CommandContext): void {
  const groups = program.command("groups").description("list groups");
  groups
    .command("list")
    .alias("ls")
    .description("list groups with their member counts (admin, auditor, reviewer)")
    .action(async (_options: unknown, command: Command) => {
      const session = context.connect(command);
      await createGroupCommands({ client: session.client, out: session.out }).list();
    });
}
