/**
 * Matchers the compiler builds once and the evaluator calls per decision: glob patterns, network
 * ranges and time windows. Pure; time is always an argument.
 */
import { isIP } from "node:net";
import type { TimeWindow } from "./document.js";

/** A compiled `*` glob: `*` alone matches anything, no `*` is plain equality. */
export type Matcher = (value: string) => boolean;

const always: Matcher = () => true;

export function globMatcher(pattern: string): Matcher {
  if (pattern === "*") return always;
  if (!pattern.includes("*")) return (value) => value === pattern;
  const source = pattern
    .split("*")
    .map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&"))
    .join(".*");
  const regex = new RegExp(`^${source}$`, "s");
  return (value) => regex.test(value);
}

/** Matches when any pattern matches. Exact names go through a Set. */
export function anyOf(patterns: readonly string[], normalise: (s: string) => string = (s) => s): Matcher {
  const exact = new Set<string>();
  const globs: Matcher[] = [];
  for (const raw of patterns) {
    const p = normalise(raw);
    if (p.includes("*")) globs.push(globMatcher(p));
    else exact.add(p);
  }
  if (globs.some((g) => g === always)) return always;
  if (globs.length === 0) return (value) => exact.has(value);
  return (value) => exact.has(value) || globs.some((g) => g(value));
}

/** An IP address as 8 16-bit words (IPv4 as its IPv4-mapped IPv6 form), or undefined. */
export function parseIp(text: string): Uint16Array | undefined {
  let ip = text;
  const zone = ip.indexOf("%");
  if (zone >= 0) ip = ip.slice(0, zone);
  const family = isIP(ip);
  if (family === 0) return undefined;
  const words = new Uint16Array(8);
  if (family === 4) {
    const [a, b, c, d] = ip.split(".").map(Number) as [number, number, number, number];
    words[5] = 0xffff;
    words[6] = (a << 8) | b;
    words[7] = (c << 8) | d;
    return words;
  }
  let head = ip;
  let tailV4: Uint16Array | undefined;
  const lastColon = ip.lastIndexOf(":");
  if (ip.includes(".", lastColon)) {
    tailV4 = parseIp(ip.slice(lastColon + 1));
    head = ip.slice(0, lastColon + 1) + "0:0";
  }
  const [left, right] = head.split("::") as [string, string | undefined];
  const l = left ? left.split(":") : [];
  const r = right ? right.split(":") : [];
  const parts = right === undefined ? l : [...l, ...Array<string>(8 - l.length - r.length).fill("0"), ...r];
  parts.forEach((part, i) => (words[i] = parseInt(part || "0", 16)));
  if (tailV4) {
    words[6] = tailV4[6] as number;
    words[7] = tailV4[7] as number;
  }
  return words;
}

function inPrefix(ip: Uint16Array, base: Uint16Array, prefix: number): boolean {
  let bits = prefix;
  for (let i = 0; i < 8 && bits > 0; i++, bits -= 16) {
    const mask = bits >= 16 ? 0xffff : (0xffff << (16 - bits)) & 0xffff;
    if (((ip[i] as number) & mask) !== ((base[i] as number) & mask)) return false;
  }
  return true;
}

const SHELL_CONTROL = new Set([";", "&", "|", "`", "$", "(", ")", "<", ">", "\r", "\n"]);

/**
 * Glob match of `text` against `pattern` where `*` spans any run of characters for which `spans`
 * holds. Linear backtracking over the last star only (no regular expression, so no catastrophic
 * backtracking): O(pattern x text) at worst.
 */
function wildcardMatch(pattern: string, text: string, spans: (c: string) => boolean): boolean {
  let p = 0;
  let t = 0;
  let star = -1;
  let resume = 0;
  while (t < text.length) {
    if (p < pattern.length && pattern[p] !== "*" && pattern[p] === text[t]) {
      p++;
      t++;
    } else if (p < pattern.length && pattern[p] === "*") {
      star = p++;
      resume = t;
    } else if (star >= 0 && spans(text[resume] as string)) {
      p = star + 1;
      t = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern.length && pattern[p] === "*") p++;
  return p === pattern.length;
}

/**
 * Command-line patterns for ssh:exec. With `strict` (allow rules), `*` never spans shell control
 * characters (; & | ` $ ( ) < > and line breaks), so `systemctl status *` cannot be stretched into
 * `systemctl status nginx; reboot`; without it (deny and review rules), `*` spans anything, so
 * `rm *` also catches `rm -rf / ;`.
 */
export function commandMatcher(patterns: readonly string[], strict: boolean): Matcher {
  const spans = strict ? (c: string) => !SHELL_CONTROL.has(c) : () => true;
  return (command) => patterns.some((pattern) => wildcardMatch(pattern, command, spans));
}

/**
 * Parses a CIDR list into a matcher over addresses parsed by `parseIp`; throws with the bad entry.
 * IPv4 networks are held in their IPv4-mapped form, so `::ffff:10.1.2.3` matches 10.0.0.0/8.
 */
export function cidrMatcher(cidrs: readonly string[]): (ip: Uint16Array) => boolean {
  const nets = cidrs.map((cidr) => {
    const parts = cidr.split("/");
    if (parts.length > 2 || (parts[1] !== undefined && !/^(0|[1-9][0-9]{0,2})$/.test(parts[1]))) {
      throw new Error(`"${cidr}" is not a CIDR (e.g. 10.0.0.0/8 or 2001:db8::/32)`);
    }
    const [address, prefixText] = parts;
    const family = isIP(address ?? "");
    const prefix = prefixText === undefined ? (family === 6 ? 128 : 32) : Number(prefixText);
    const base = parseIp(address ?? "");
    if (!family || !base || !/^\d+$/.test(prefixText ?? "0") || prefix < 0 || prefix > (family === 6 ? 128 : 32)) {
      throw new Error(`"${cidr}" is not a CIDR (e.g. 10.0.0.0/8 or 2001:db8::/32)`);
    }
    return { base, prefix: family === 4 ? prefix + 96 : prefix };
  });
  return (ip) => nets.some((n) => inPrefix(ip, n.base, n.prefix));
}

const DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"] as const;

function minutesOf(clock: string): number {
  const [h, m] = clock.split(":").map(Number);
  return (h as number) * 60 + (m as number);
}

/** Checks an IANA time zone name; throws when unknown. */
export function checkTimeZone(timezone: string): void {
  new Intl.DateTimeFormat("en-US", { timeZone: timezone });
}

/**
 * Local day of week and minute of day in a time zone. Formatting is costly, so results are memoised
 * per zone for the current minute (time stays an argument: the memo only caches a pure function).
 */
export class ZonedClock {
  private readonly formatters = new Map<string, Intl.DateTimeFormat>();
  private readonly memo = new Map<string, { minute: number; day: number; minuteOfDay: number }>();

  at(now: number, timezone: string): { day: number; minuteOfDay: number } {
    const minute = Math.floor(now / 60_000);
    const cached = this.memo.get(timezone);
    if (cached && cached.minute === minute) return cached;
    let formatter = this.formatters.get(timezone);
    if (!formatter) {
      formatter = new Intl.DateTimeFormat("en-US", {
        timeZone: timezone,
        weekday: "short",
        hour: "2-digit",
        minute: "2-digit",
        hourCycle: "h23",
      });
      this.formatters.set(timezone, formatter);
    }
    let day = 0;
    let hour = 0;
    let min = 0;
    for (const part of formatter.formatToParts(new Date(minute * 60_000))) {
      if (part.type === "weekday") day = DAYS.indexOf(part.value.toLowerCase().slice(0, 3) as (typeof DAYS)[number]);
      else if (part.type === "hour") hour = Number(part.value);
      else if (part.type === "minute") min = Number(part.value);
    }
    const result = { minute, day, minuteOfDay: hour * 60 + min };
    this.memo.set(timezone, result);
    return result;
  }
}

/** A compiled time window: `(now) => inside?`. Windows with `to` < `from` cross midnight (the day is the start day). */
export function timeWindowMatcher(window: TimeWindow, clock: ZonedClock): (now: number) => boolean {
  const timezone = window.timezone ?? "UTC";
  const from = minutesOf(window.from);
  const to = minutesOf(window.to);
  const days = window.days ? new Set(window.days.map((d) => DAYS.indexOf(d as (typeof DAYS)[number]))) : undefined;
  const crosses = to <= from;
  return (now) => {
    const { day, minuteOfDay } = clock.at(now, timezone);
    if (!crosses) return minuteOfDay >= from && minuteOfDay < to && (!days || days.has(day));
    // Crossing midnight: the evening part belongs to `day`, the morning part to the day before.
    if (minuteOfDay >= from) return !days || days.has(day);
    if (minuteOfDay < to) return !days || days.has((day + 6) % 7);
    return false;
  };
}
