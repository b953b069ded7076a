/**
 * `moat users ...` and `moat service-accounts create`: the people (who log in with a password) and
 * machines (which use API keys) the control plane knows. Users are named on the command line by
 * email (a service account by its name), id, or `me`; `resolveUser` turns that into what the API
 * addresses, since it addresses users by id only. Passwords are read from stdin, never from argv.
 */
import { Option, type Command } from "commander";
import { ROLES, type ApiClient, type Role, type User, type UserPatch } from "../api-client.js";
import type { CommandContext } from "../context.js";
import { CliError, CliErrorCode } from "../errors.js";
import { readPassword, type CliIo } from "../io.js";
import { collect } from "../options.js";
import { clean, formatFields, formatTable, relativeTime, timestamp, type Output } from "../output.js";

/** A user as the API addresses it (`id`, or "me"), and how to name it in messages. */
export interface UserRef {
  id: string;
  label: string;
}

/**
 * Finds a user by exact id, else by email or service-account name (case-insensitive); `me` passes
 * through. Only admins and auditors may list users, so for anyone else a reference to themselves
 * (their id or email) becomes `me`, and any other reference fails with the API's permission error.
 */
export async function resolveUser(client: Pick<ApiClient, "listUsers" | "whoami">, ref: string): Promise<UserRef> {
  if (ref === "me") return { id: "me", label: "you" };
  let users: User[];
  try {
    users = await client.listUsers();
  } catch (error) {
    if (!(error instanceof CliError) || error.code !== "permission_denied") throw error;
    const me = await client.whoami();
    if (ref === me.id || ref.toLowerCase() === me.email.toLowerCase()) return { id: "me", label: me.email };
    throw error;
  }
  const lower = ref.toLowerCase();
  const user = users.find((u) => u.id === ref) ?? users.find((u) => u.email.toLowerCase() === lower);
  if (!user) {
    throw new CliError("not_found", `no user or service account named or with id "${clean(ref)}"`, {
      hint: "`moat users list` shows them",
    });
  }
  return { id: user.id, label: user.email };
}

/** Options of `users create`. */
export interface CreateUserOptions {
  role: Role;
  group?: string[];
  displayName?: string;
  passwordStdin?: boolean;
}

/** Options of `users set`; `groups: false` is `--no-groups`. */
export interface SetUserOptions {
  role?: Role;
  group?: string[];
  groups?: boolean;
  displayName?: string;
}

/** The user commands over narrow dependencies. */
export function createUserCommands(deps: {
  client: Pick<
    ApiClient,
    | "listUsers"
    | "getUser"
    | "createUser"
    | "updateUser"
    | "createServiceAccount"
    | "whoami"
    | "linkOidc"
    | "unlinkOidc"
  >;
  out: Output;
  io: Pick<CliIo, "stdin" | "stderr">;
  /** The server, for the login command printed after creating a user with a password. */
  server: string;
}) {
  const { client, out } = deps;

  function printUser(user: User): void {
    const now = out.now();
    out.text(
      formatFields([
        [user.kind === "service-account" ? "Name" : "Email", clean(user.email)],
        ["Display name", clean(user.displayName)],
        ["ID", clean(user.id)],
        ["Kind", clean(user.kind)],
        ["Role", clean(user.role)],
        ["Groups", clean(user.groups.join(", "))],
        ["Password", user.kind === "service-account" ? "- (API keys only)" : user.hasPassword ? "set" : "none"],
        ["Status", user.disabled ? "disabled" : "active"],
        ...(user.kind === "user"
          ? [
              [
                "Single sign-on",
                user.oidc ? `${clean(user.oidc.subject)} at ${clean(user.oidc.issuer)}` : "not linked",
              ] as [string, string],
            ]
          : []),
        ["Created", timestamp(user.createdAt, now)],
      ]),
    );
  }

  async function update(ref: string, patch: UserPatch): Promise<User> {
    const target = await resolveUser(client, ref);
    return client.updateUser(target.id, patch);
  }

  return {
    async list(): Promise<User[]> {
      const users = await client.listUsers();
      if (out.json) {
        out.data({ items: users });
        return users;
      }
      const now = out.now();
      const rows = [...users]
        .sort((a, b) => a.email.localeCompare(b.email))
        .map((u) => [
          clean(u.email),
          clean(u.id),
          clean(u.kind),
          clean(u.role),
          clean(u.groups.join(",")),
          u.kind === "service-account" ? "-" : u.hasPassword ? "yes" : "no",
          u.disabled ? "disabled" : "active",
          relativeTime(u.createdAt, now),
        ]);
      out.text(formatTable(["USER", "ID", "KIND", "ROLE", "GROUPS", "PASSWORD", "STATUS", "CREATED"], rows));
      return users;
    },

    async get(ref: string): Promise<User> {
      const user = await client.getUser((await resolveUser(client, ref)).id);
      if (out.json) out.data(user);
      else printUser(user);
      return user;
    },

    async create(email: string, options: CreateUserOptions): Promise<User> {
      const password = options.passwordStdin
        ? await readPassword(deps.io, { prompt: `Password for ${clean(email)}: `, repeat: "Repeat the password: " })
        : undefined;
      const user = await client.createUser({
        email,
        role: options.role,
        ...(options.group ? { groups: options.group } : {}),
        ...(options.displayName !== undefined ? { displayName: options.displayName } : {}),
        ...(password !== undefined ? { password } : {}),
      });
      if (out.json) out.data(user);
      else {
        out.text(`Created user ${clean(user.email)} (id ${clean(user.id)}, role ${clean(user.role)}).`);
        out.text(
          user.hasPassword
            ? `They log in with \`moat login --server ${deps.server} --email ${clean(user.email)}\`.`
            : `They have no password yet: set one with \`moat users password ${clean(user.email)} --password-stdin\`.`,
        );
      }
      return user;
    },

    async setDisabled(ref: string, disabled: boolean): Promise<User> {
      const user = await update(ref, { disabled });
      if (out.json) out.data(user);
      else if (disabled)
        out.text(
          `Disabled ${clean(user.email)} (id ${clean(user.id)}): their API keys no longer work and their ` +
            "access tokens are revoked, on the control plane and on every agent.",
        );
      else
        out.text(
          `Enabled ${clean(user.email)} (id ${clean(user.id)}): their API keys work again; ` +
            "revoked access tokens stay revoked, so they log in again.",
        );
      return user;
    },

    async set(ref: string, options: SetUserOptions): Promise<User> {
      const patch: UserPatch = {
        ...(options.role ? { role: options.role } : {}),
        ...(options.group ? { groups: options.group } : options.groups === false ? { groups: [] } : {}),
        ...(options.displayName !== undefined ? { displayName: options.displayName } : {}),
      };
      if (Object.keys(patch).length === 0) {
        throw new CliError(
          CliErrorCode.usage,
          "nothing to change: pass --role, --group, --no-groups or --display-name",
        );
      }
      const user = await update(ref, patch);
      if (out.json) out.data(user);
      else {
        out.text(`Changed ${clean(user.email)} (id ${clean(user.id)}):`);
        printUser(user);
      }
      return user;
    },

    async password(ref: string, options: { passwordStdin?: boolean }): Promise<User> {
      if (!options.passwordStdin && !deps.io.stdin.isTTY)
        throw new CliError(CliErrorCode.usage, "stdin is not a terminal: pipe the password with --password-stdin");
      const target = await resolveUser(client, ref);
      const password = await readPassword(deps.io, {
        prompt: `New password for ${clean(target.label)}: `,
        repeat: "Repeat the password: ",
      });
      const user = await client.updateUser(target.id, { password });
      if (out.json) out.data(user);
      else
        out.text(
          `Changed the password of ${clean(user.email)}. Access tokens issued before stay valid until they expire.`,
        );
      return user;
    },

    async linkOidc(ref: string, options: { subject: string; issuer?: string }): Promise<User> {
      const target = await resolveUser(client, ref);
      const user = await client.linkOidc(target.id, {
        subject: options.subject,
        ...(options.issuer ? { issuer: options.issuer } : {}),
      });
      if (out.json) out.data(user);
      else
        out.text(
          `Linked ${clean(user.email)} to the identity-provider account ${clean(user.oidc?.subject ?? options.subject)}` +
            ` of ${clean(user.oidc?.issuer ?? options.issuer ?? "")}: single sign-on as that account logs in as this user.`,
        );
      return user;
    },

    async unlinkOidc(ref: string): Promise<void> {
      const target = await resolveUser(client, ref);
      await client.unlinkOidc(target.id);
      if (out.json) out.data({ id: target.id, oidc: null });
      else
        out.text(
          `Unlinked ${clean(target.label)} from single sign-on; their access tokens are revoked. ` +
            "Until linked again, single sign-on cannot log in as this user.",
        );
    },

    async createServiceAccount(name: string, options: { role?: Role; group?: string[] }): Promise<User> {
      const account = await client.createServiceAccount({
        name,
        ...(options.role ? { role: options.role } : {}),
        ...(options.group ? { groups: options.group } : {}),
      });
      if (out.json) out.data(account);
      else {
        out.text(
          `Created service account ${clean(account.email)} (id ${clean(account.id)}, role ${clean(account.role)}).`,
        );
        out.text(
          `Service accounts authenticate with API keys: \`moat api-keys create KEY-NAME --user ${clean(account.email)}\`.`,
        );
      }
      return account;
    },
  };
}

const roleOption = (description: string) => new Option("--role <role>", description).choices(ROLES);
const groupOption = (description: string) => new Option("--group <group>", description).argParser(collect);

/** Adds `users` and `service-accounts` (alias `sa`) to the program. */
export function registerUserCommands(program: Command, context: CommandContext): void {
  const commands = (command: Command) => {
    const session = context.connect(command);
    return createUserCommands({ client: session.client, out: session.out, io: context.io, server: session.server });
  };
  const users = program
    .command("users")
    .alias("user")
    .description("create, inspect, change and disable users (people, who log in with a password)");

  users
    .command("list")
    .alias("ls")
    .description("list users and service accounts (admin, auditor)")
    .action(async (_options: unknown, command: Command) => {
      await commands(command).list();
    });

  users
    .command("create")
    .description("create a user; with --password-stdin they can `moat login` with it")
    .argument("<email>", "the person's email, which is also their login")
    .addOption(roleOption("admin, auditor, reviewer or member (required)").makeOptionMandatory())
    .addOption(groupOption("a group the user belongs to (repeatable)"))
    .option("--display-name <name>", "the name shown in lists (default: the email)")
    .option("--password-stdin", "read the initial password from stdin (prompted twice on a terminal)")
    .action(async (email: string, options: CreateUserOptions, command: Command) => {
      await commands(command).create(email, options);
    });

  users
    .command("get")
    .description("show one user (`me` for yourself)")
    .argument("<user>", "email, service-account name, id, or me")
    .action(async (ref: string, _options: unknown, command: Command) => {
      await commands(command).get(ref);
    });

  users
    .command("disable")
    .description("disable a user: their keys stop working and their access tokens are revoked")
    .argument("<user>", "email, service-account name or id")
    .action(async (ref: string, _options: unknown, command: Command) => {
      await commands(command).setDisabled(ref, true);
    });

  users
    .command("enable")
    .description("enable a disabled user again")
    .argument("<user>", "email, service-account name or id")
    .action(async (ref: string, _options: unknown, command: Command) => {
      await commands(command).setDisabled(ref, false);
    });

  users
    .command("set")
    .description("change a user's role, groups or display name")
    .argument("<user>", "email, service-account name or id")
    .addOption(roleOption("the new role"))
    .addOption(groupOption("a group (repeatable): replaces the user's groups").conflicts("groups"))
    .addOption(new Option("--no-groups", "remove the user from every group"))
    .option("--display-name <name>", "the new display name")
    .action(async (ref: string, options: SetUserOptions, command: Command) => {
      await commands(command).set(ref, options);
    });

  users
    .command("password")
    .description("set a user's password (read from stdin, or prompted twice on a terminal)")
    .argument("<user>", "email or id")
    .option("--password-stdin", "read the password from stdin (required when stdin is not a terminal)")
    .action(async (ref: string, options: { passwordStdin?: boolean }, command: Command) => {
      await commands(command).password(ref, options);
    });

  users
    .command("link-oidc")
    .description(
      "link a user to an account of the identity provider, so single sign-on as that account logs in as them " +
        "(users are never linked by email)",
    )
    .argument("<user>", "email or id")
    .requiredOption("--subject <sub>", "the account's subject (`sub` claim), as the refused login reported it")
    .option("--issuer <url>", "the identity provider's issuer (default: the one the control plane is configured with)")
    .action(async (ref: string, options: { subject: string; issuer?: string }, command: Command) => {
      await commands(command).linkOidc(ref, options);
    });

  users
    .command("unlink-oidc")
    .description("remove a user's single sign-on link (their access tokens are revoked)")
    .argument("<user>", "email or id")
    .action(async (ref: string, _options: unknown, command: Command) => {
      await commands(command).unlinkOidc(ref);
    });

  const accounts = program
    .command("service-accounts")
    .alias("sa")
    .description("create service accounts (machines, which authenticate with API keys)");

  accounts
    .command("create")
    .description("create a service account; then give it an API key with `moat api-keys create --user NAME`")
    .argument("<name>", "lowercase letters, digits, dots, dashes and underscores, e.g. ci-deploy")
    .addOption(roleOption("admin, auditor, reviewer or member (default: member)"))
    .addOption(groupOption("a group the account belongs to (repeatable)"))
    .action(async (name: string, options: { role?: Role; group?: string[] }, command: Command) => {
      await commands(command).createServiceAccount(name, options);
    });
}
