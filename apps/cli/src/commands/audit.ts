/**
 * `moat audit`: the audit trail for auditors and admins. `search` pages through events with the
 * API's keyset cursor; `tail` prints the latest events and, with `-f`, follows new ones as they are
 * stored (polling /audit/follow, each agent's events in sequence order) until Ctrl-C; `sessions` and `session ID` show session
 * summaries and a session's events in order; `export` streams JSON Lines to stdout with backpressure.
 * Owns the parsing of its filters (agent by name or id, times as ISO 8601 or "15m ago" durations).
 */
import { setTimeout as sleep } from "node:timers/promises";
import { InvalidArgumentError, Option, type Command } from "commander";
import type { ApiClient, AuditEvent, AuditEventFilter, AuditSession } from "../api-client.js";
import type { CommandContext } from "../context.js";
import { CliError, CliErrorCode } from "../errors.js";
import type { Writer } from "../io.js";
import { clean, formatFields, formatTable, relativeTime, timestamp, type Output } from "../output.js";
import { resolveAgent } from "./agents.js";

/** The pseudo-agent whose chain holds the control plane's own actions. */
const CONTROL_PLANE = "control-plane";
const VERDICTS = ["allow", "deny", "review"] as const;
/** Largest page the API serves. */
const PAGE = 1000;

const DURATION = /^(\d+)(s|m|h|d)$/;
const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * A time filter: an ISO 8601 date-time (with a zone, or UTC if none) or a duration such as `30s`,
 * `15m`, `2h` or `7d` meaning that long before `now`. Returns an ISO string.
 */
export function parseTime(value: string, now: Date): string {
  const duration = DURATION.exec(value.trim());
  if (duration)
    return new Date(now.getTime() - Number(duration[1]) * (UNIT_MS[duration[2] as string] ?? 0)).toISOString();
  if (/^\d{4}-\d{2}-\d{2}/.test(value)) {
    const withZone = /[zZ]|[+-]\d{2}:?\d{2}$/.test(value) || value.length === 10 ? value : `${value}Z`;
    const date = new Date(withZone);
    if (!Number.isNaN(date.getTime())) return date.toISOString();
  }
  throw new CliError(
    CliErrorCode.usage,
    `"${clean(value)}" is not a time: use an ISO 8601 date-time (2025-11-25T14:00:00Z) or a duration (30s, 15m, 2h, 7d)`,
  );
}

/** Filters as typed on the command line. */
export interface AuditFilterOptions {
  agent?: string;
  user?: string;
  resource?: string;
  type?: string;
  verdict?: (typeof VERDICTS)[number];
  since?: string;
  until?: string;
  query?: string;
}

/** The statement, command or message of an event, on one line. */
export function eventText(e: AuditEvent): string {
  const d = e.detail;
  const text =
    d?.kind === "dbQuery" && typeof d.text === "string"
      ? d.text
      : d?.kind === "sshExec" && typeof d.command === "string"
        ? d.command
        : e.message;
  return text.replace(/\s+/g, " ").trim();
}

const shortTime = (iso: string) => iso.replace(/\.\d+Z$/, "Z");
const truncate = (text: string, max: number) => (text.length > max ? `${text.slice(0, max - 3)}...` : text);

/** Writes `text`, waiting for 'drain' when the stream says its buffer is full (a slow pipe). */
async function writeAll(writer: Writer, text: string): Promise<void> {
  const ok = writer.write(text);
  const emitter = writer as Partial<NodeJS.EventEmitter>;
  if (ok === false && typeof emitter.once === "function")
    await new Promise<void>((resolve) => emitter.once?.("drain", () => resolve()));
}

/** The audit commands over narrow dependencies. */
export function createAuditCommands(deps: {
  client: Pick<
    ApiClient,
    | "listAgents"
    | "searchAuditEvents"
    | "listAuditSessions"
    | "getAuditSession"
    | "exportAuditEvents"
    | "followAuditEvents"
  >;
  out: Output;
  stdout: Writer;
  /** See CliIo.onInterrupt. */
  onInterrupt?: (handler: () => void) => () => void;
}) {
  const { client, out } = deps;
  let names: Promise<Map<string, string>> | undefined;

  /** Agent names by id, for display (ids when the agents cannot be listed). */
  function agentName(id: string): Promise<string> {
    names ??= client.listAgents().then(
      (agents) => new Map(agents.map((a) => [a.id, a.name])),
      () => new Map(),
    );
    return names.then((m) => m.get(id) ?? id);
  }

  async function toFilter(options: AuditFilterOptions): Promise<AuditEventFilter> {
    const now = out.now();
    const agent =
      options.agent === undefined || options.agent === CONTROL_PLANE
        ? options.agent
        : (await resolveAgent(client, options.agent)).id;
    return {
      ...(agent ? { agent } : {}),
      ...(options.user ? { user: options.user } : {}),
      ...(options.resource ? { resource: options.resource } : {}),
      ...(options.type ? { type: options.type } : {}),
      ...(options.verdict ? { verdict: options.verdict } : {}),
      ...(options.since ? { since: parseTime(options.since, now) } : {}),
      ...(options.until ? { until: parseTime(options.until, now) } : {}),
      ...(options.query ? { q: options.query } : {}),
    };
  }

  async function eventRows(events: AuditEvent[]): Promise<string[][]> {
    return Promise.all(
      events.map(async (e) => [
        shortTime(e.time),
        clean(await agentName(e.agentId)),
        clean(e.type),
        clean(e.user),
        clean(e.resource),
        clean(e.verdict),
        clean(truncate(eventText(e), 100)),
      ]),
    );
  }

  /** One line per event, for tail (no header: lines arrive as they happen). */
  async function eventLine(e: AuditEvent): Promise<string> {
    if (out.json) return JSON.stringify(e);
    const [time, agent, type, user, resource, verdict, text] = (await eventRows([e]))[0] as string[];
    return `${time}  ${agent}  ${(type ?? "").padEnd(14)}  ${user}  ${resource}  ${(verdict ?? "").padEnd(6)}  ${text}`;
  }

  return {
    async search(options: AuditFilterOptions & { limit: number }): Promise<AuditEvent[]> {
      const filter = await toFilter(options);
      const items: AuditEvent[] = [];
      let cursor: string | undefined;
      do {
        const page = await client.searchAuditEvents({
          ...filter,
          limit: Math.min(PAGE, options.limit - items.length),
          ...(cursor ? { cursor } : {}),
        });
        items.push(...page.items);
        cursor = page.nextCursor;
      } while (cursor && items.length < options.limit);
      if (out.json) {
        out.data({ items, ...(cursor ? { nextCursor: cursor } : {}) });
        return items;
      }
      if (items.length === 0) {
        out.text("No audit events match.");
        return items;
      }
      out.text(formatTable(["TIME", "AGENT", "TYPE", "USER", "RESOURCE", "VERDICT", "TEXT"], await eventRows(items)));
      if (cursor) out.note(`(the ${items.length} newest shown; more match: raise --limit or narrow the filters)`);
      return items;
    },

    async tail(options: AuditFilterOptions & { lines: number; follow?: boolean; interval: number }): Promise<void> {
      const filter = await toFilter(options);
      // Following starts where the store ends now (taken before the latest are read: an event stored
      // in between is in both, and printed once).
      let cursor = options.follow ? (await client.followAuditEvents({ ...filter, limit: 1 })).cursor : undefined;
      const latest =
        options.lines > 0 ? (await client.searchAuditEvents({ ...filter, limit: options.lines })).items.reverse() : [];
      const printed = new Set<string>();
      for (const e of latest) {
        await writeAll(deps.stdout, `${await eventLine(e)}\n`);
        printed.add(e.id);
      }
      if (!options.follow || cursor === undefined) return;

      // Follow in store order, each agent's events in sequence order: an event stored late with an
      // older time (an agent draining its spool after an outage) is shown when it is stored.
      const stop = new AbortController();
      const release = deps.onInterrupt?.(() => stop.abort());
      try {
        while (!stop.signal.aborted) {
          try {
            await sleep(options.interval, undefined, { signal: stop.signal });
          } catch {
            break; // interrupted
          }
          try {
            for (;;) {
              const page: { items: AuditEvent[]; cursor: string } = await client.followAuditEvents({
                ...filter,
                limit: PAGE,
                cursor,
              });
              for (const e of page.items) {
                if (printed.has(e.id)) continue;
                await writeAll(deps.stdout, `${await eventLine(e)}\n`);
              }
              const moved = page.cursor !== cursor;
              cursor = page.cursor;
              if (!moved || stop.signal.aborted) break;
            }
            printed.clear(); // only the latest printed before following could come again, in the first round
          } catch (error) {
            // A control plane restarting is waited for, like `kubectl logs -f` does not: tail is for watching.
            if (error instanceof CliError && error.code === CliErrorCode.unreachable) {
              out.note(`moat: ${error.message}; retrying`);
              continue;
            }
            throw error;
          }
        }
      } finally {
        release?.();
      }
    },

    async sessions(
      options: Pick<AuditFilterOptions, "agent" | "user" | "resource" | "since" | "until"> & { limit: number },
    ): Promise<AuditSession[]> {
      const { agent, user, resource, since, until } = await toFilter(options);
      const filter = { agent, user, resource, since, until };
      const items: AuditSession[] = [];
      let cursor: string | undefined;
      do {
        const page = await client.listAuditSessions({
          ...filter,
          limit: Math.min(PAGE, options.limit - items.length),
          ...(cursor ? { cursor } : {}),
        });
        items.push(...page.items);
        cursor = page.nextCursor;
      } while (cursor && items.length < options.limit);
      if (out.json) {
        out.data({ items, ...(cursor ? { nextCursor: cursor } : {}) });
        return items;
      }
      if (items.length === 0) {
        out.text("No sessions match.");
        return items;
      }
      const now = out.now();
      const rows = await Promise.all(
        items.map(async (s) => [
          clean(s.sessionId),
          clean(await agentName(s.agentId)),
          clean(s.user),
          clean(s.resource),
          relativeTime(s.startedAt, now),
          s.endedAt ? duration(Date.parse(s.endedAt) - Date.parse(s.startedAt)) : "open",
          String(s.statementCount),
          String(s.deniedCount),
        ]),
      );
      out.text(
        formatTable(["SESSION", "AGENT", "USER", "RESOURCE", "STARTED", "DURATION", "STATEMENTS", "DENIED"], rows),
      );
      if (cursor) out.note(`(the ${items.length} most recent shown; more match: raise --limit or narrow the filters)`);
      return items;
    },

    async session(id: string, options: { agent?: string; limit: number }): Promise<AuditEvent[]> {
      const agent = (await toFilter({ ...(options.agent ? { agent: options.agent } : {}) })).agent;
      const items: AuditEvent[] = [];
      let cursor: string | undefined;
      let session: AuditSession | undefined;
      do {
        const page = await client.getAuditSession(id, {
          ...(agent ? { agent } : {}),
          limit: Math.min(PAGE, options.limit - items.length),
          ...(cursor ? { cursor } : {}),
        });
        session = page.session;
        items.push(...page.items);
        cursor = page.nextCursor;
      } while (cursor && items.length < options.limit);
      if (out.json) {
        out.data({ session, items, ...(cursor ? { nextCursor: cursor } : {}) });
        return items;
      }
      const s = session as AuditSession;
      const now = out.now();
      out.text(
        formatFields([
          ["Session", clean(s.sessionId)],
          ["Agent", clean(await agentName(s.agentId))],
          ["User", clean(s.user)],
          ["Resource", clean(s.resource)],
          ["Started", timestamp(s.startedAt, now)],
          ["Ended", s.endedAt ? timestamp(s.endedAt, now) : "- (no session.end recorded)"],
          ["Events", `${s.eventCount} (${s.statementCount} statements, ${s.deniedCount} denied)`],
        ]),
      );
      out.text("");
      out.text(
        formatTable(
          ["SEQ", "TIME", "TYPE", "VERDICT", "RULE", "TEXT"],
          items.map((e) => [
            e.seq,
            shortTime(e.time),
            clean(e.type),
            clean(e.verdict),
            clean(e.rule),
            clean(truncate(eventText(e), 120)),
          ]),
        ),
      );
      if (cursor) out.note(`(the first ${items.length} events shown: raise --limit for more)`);
      return items;
    },

    async export(options: AuditFilterOptions): Promise<number> {
      const filter = await toFilter(options);
      const chunks = await client.exportAuditEvents(filter);
      const decoder = new TextDecoder();
      let lines = 0;
      for await (const chunk of chunks) {
        for (const byte of chunk) if (byte === 0x0a) lines++;
        await writeAll(deps.stdout, decoder.decode(chunk, { stream: true }));
      }
      const rest = decoder.decode();
      if (rest) await writeAll(deps.stdout, rest);
      out.note(`Exported ${lines} audit event${lines === 1 ? "" : "s"}.`);
      return lines;
    },
  };
}

function duration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return "-";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function positive(max: number) {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1 || n > max)
      throw new InvalidArgumentError(`expected a whole number from 1 to ${max}`);
    return n;
  };
}

/** The event filters shared by search, tail and export. */
function withFilters(command: Command, what: "events" | "sessions" = "events"): Command {
  command
    .option("--agent <agent>", "only this agent's events (name or id; control-plane for the control plane's own)")
    .option("--user <email>", "only this user's (email or service-account name)")
    .option("--resource <name>", "only this resource's");
  if (what === "events")
    command
      .option("--type <type>", "only events of this type (db.query, session.start, policy.changed, ...)")
      .addOption(new Option("--verdict <verdict>", "only this verdict").choices(VERDICTS))
      .option("-q, --query <text>", "only events whose statement, command or message contains this text");
  return command
    .option("--since <time>", "from this time: ISO 8601 (2025-11-25T14:00:00Z) or a duration ago (30s, 15m, 2h, 7d)")
    .option("--until <time>", "before this time (same forms as --since)");
}

/** Adds `audit` and its subcommands to the program. */
export function registerAuditCommands(program: Command, context: CommandContext): void {
  const commands = (command: Command) => {
    const session = context.connect(command);
    return createAuditCommands({
      client: session.client,
      out: session.out,
      stdout: context.io.stdout,
      ...(context.io.onInterrupt ? { onInterrupt: context.io.onInterrupt } : {}),
    });
  };
  const audit = program.command("audit").description("search, follow and export the audit trail (admin, auditor)");

  withFilters(
    audit
      .command("search")
      .description("audit events matching the filters, newest first")
      .addOption(new Option("--limit <n>", "at most this many events (default 50)").argParser(positive(100_000))),
  ).action(async (options: AuditFilterOptions & { limit?: number }, command: Command) => {
    await commands(command).search({ ...options, limit: options.limit ?? 50 });
  });

  withFilters(
    audit
      .command("tail")
      .description("the latest audit events, oldest first; with -f, then new events as they are stored (Ctrl-C stops)")
      .option("-f, --follow", "keep printing new events until interrupted")
      .addOption(
        new Option("-n, --lines <n>", "how many of the latest events to print first (default 20)").argParser((v) => {
          const n = Number(v);
          if (!Number.isInteger(n) || n < 0 || n > 1000) throw new InvalidArgumentError("expected 0 to 1000");
          return n;
        }),
      )
      .addOption(
        new Option("--interval <seconds>", "seconds between polls with -f (default 2)").argParser((v) => {
          const n = Number(v);
          if (!Number.isFinite(n) || n < 0.1 || n > 3600)
            throw new InvalidArgumentError("expected 0.1 to 3600 seconds");
          return Math.round(n * 1000);
        }),
      ),
  ).action(
    async (options: AuditFilterOptions & { follow?: boolean; lines?: number; interval?: number }, command: Command) => {
      await commands(command).tail({ ...options, lines: options.lines ?? 20, interval: options.interval ?? 2000 });
    },
  );

  withFilters(
    audit
      .command("sessions")
      .description("sessions in the audit trail, most recently started first")
      .addOption(new Option("--limit <n>", "at most this many sessions (default 50)").argParser(positive(100_000))),
    "sessions",
  ).action(async (options: AuditFilterOptions & { limit?: number }, command: Command) => {
    await commands(command).sessions({ ...options, limit: options.limit ?? 50 });
  });

  audit
    .command("session")
    .description("one session: its summary and its events in order")
    .argument("<id>", "the session's id (`moat audit sessions` shows it)")
    .option("--agent <agent>", "the agent that recorded it, when several used the same id (name or id)")
    .addOption(new Option("--limit <n>", "at most this many events (default 1000)").argParser(positive(100_000)))
    .action(async (id: string, options: { agent?: string; limit?: number }, command: Command) => {
      await commands(command).session(id, { ...options, limit: options.limit ?? 1000 });
    });

  withFilters(
    audit
      .command("export")
      .description("every matching event, oldest first, as JSON Lines on stdout (moat audit export > trail.jsonl)"),
  ).action(async (options: AuditFilterOptions, command: Command) => {
    await commands(command).export(options);
  });
}
