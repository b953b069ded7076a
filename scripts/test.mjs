#!/usr/bin/env node
// `npm test` after set-up: static checks first (generated code fresh, typecheck, lint), then every
// vitest project in one run (unit, REST, store on SQLite and PostgreSQL, end-to-end processes).
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
process.env.PATH = `${join(root, ".moat", "tools", "node_modules", ".bin")}:${join(root, "node_modules", ".bin")}:${process.env.PATH}`;

function step(name, cmd, args) {
  process.stderr.write(`\n[test] ${name}\n`);
  const result = spawnSync(cmd, args, { cwd: root, stdio: "inherit" });
  if (result.status !== 0) {
    process.stderr.write(`[test] ${name} failed\n`);
    process.exit(result.status ?? 1);
  }
}

step("generated code is up to date", "node", ["scripts/generate.mjs", "--check"]);
step("typecheck", "pnpm", ["exec", "turbo", "run", "typecheck", "--output-logs=errors-only"]);
step("lint", "pnpm", ["run", "lint"]);
step("tests", "pnpm", ["exec", "vitest", "run", ...process.argv.slice(2)]);
