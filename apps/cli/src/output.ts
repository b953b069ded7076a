/**
 * How commands print: aligned plain-text tables, "key: value" blocks, relative dates, and `--json`
 * (the API's data, pretty-printed, nothing else on stdout). Strings that come from the server are
 * made terminal-safe here, since agents report some of them (hostname, version) themselves.
 */
import type { Writer } from "./io.js";

/** A command's view of output: JSON mode or human mode, one of them per invocation. */
export interface Output {
  readonly json: boolean;
  /** Prints `data` as JSON on stdout (the `--json` contract: one JSON document per command). */
  data(data: unknown): void;
  /** Prints human text on stdout (a trailing newline is added). */
  text(text: string): void;
  /** Prints a note on stderr: progress and warnings never mix with data on stdout. */
  note(text: string): void;
  now(): Date;
}

/** Creates the output of one invocation. */
export function createOutput(deps: { stdout: Writer; stderr: Writer; json: boolean; now?: () => Date }): Output {
  return {
    json: deps.json,
    data: (data) => void deps.stdout.write(`${JSON.stringify(data, null, 2)}\n`),
    text: (text) => void deps.stdout.write(`${text}\n`),
    note: (text) => void deps.stderr.write(`${text}\n`),
    now: deps.now ?? (() => new Date()),
  };
}

/**
 * Replaces control characters (C0, DEL, C1) so a value cannot move the cursor or inject escape
 * sequences into the user's terminal; empty values show as "-" so columns stay readable.
 */
export function clean(value: string | null | undefined): string {
  if (value === null || value === undefined || value === "") return "-";
  // eslint-disable-next-line no-control-regex
  return value.replace(/[\u0000-\u001f\u007f-\u009f]/g, "?");
}

/** Formats rows under headers with columns padded to the widest cell, two spaces apart. */
export function formatTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((header, i) => Math.max(header.length, ...rows.map((row) => (row[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd();
  return [line(headers), ...rows.map(line)].join("\n");
}

/** Formats "Label:  value" lines with the values aligned. */
export function formatFields(fields: [label: string, value: string][]): string {
  const width = Math.max(...fields.map(([label]) => label.length + 1));
  return fields.map(([label, value]) => `${`${label}:`.padEnd(width)}  ${value}`).join("\n");
}

const units: [limitSeconds: number, divisor: number, suffix: string][] = [
  [60, 1, "s"],
  [3600, 60, "m"],
  [86_400, 3600, "h"],
  [30 * 86_400, 86_400, "d"],
];

/**
 * "12s ago", "5m ago", "in 24h"; beyond 30 days the ISO date, since "400d ago" helps nobody.
 * `null` (never happened) prints as "-".
 */
export function relativeTime(iso: string | null, now: Date): string {
  if (iso === null) return "-";
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return clean(iso);
  // Truncated, not rounded: a token valid for 23h59m59.9s is "in 23h", not "in 1d".
  const seconds = Math.trunc((now.getTime() - at.getTime()) / 1000);
  const magnitude = Math.abs(seconds);
  if (magnitude < 1) return "just now";
  for (const [limit, divisor, suffix] of units) {
    if (magnitude < limit) {
      const amount = `${Math.floor(magnitude / divisor)}${suffix}`;
      return seconds >= 0 ? `${amount} ago` : `in ${amount}`;
    }
  }
  return at.toISOString().slice(0, 10);
}

/** ISO timestamp followed by the relative time, for detail views: "2025-01-02T03:04:05.000Z (5m ago)". */
export function timestamp(iso: string | null, now: Date): string {
  if (iso === null) return "-";
  return `${clean(iso)} (${relativeTime(iso, now)})`;
}
