/**
 * Parsers of command-line option values shared by command modules (commander `argParser`s). Pure:
 * they return the parsed value or throw commander's `InvalidArgumentError` (a usage error, exit 2).
 */
import { InvalidArgumentError } from "commander";

/** Repeatable option: each use adds a value. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** A whole number of at least 1, e.g. `--expires-in-days 90`. */
export function positiveInteger(value: string): number {
  const number = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(number) || number < 1)
    throw new InvalidArgumentError("expected a whole number of at least 1");
  return number;
}
