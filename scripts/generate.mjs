#!/usr/bin/env node
// Regenerates the protobuf code (buf + protoc-gen-es, offline) from proto/. With --check, generates
// into a temporary directory and fails if the committed code differs (CI: generated code is fresh).
import { spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const check = process.argv.includes("--check");
const env = { ...process.env, PATH: `${join(root, "node_modules", ".bin")}:${process.env.PATH}` };
const committed = join(root, "packages", "proto", "src", "gen");

function buf(args, cwd = root) {
  const result = spawnSync("buf", args, { cwd, env, stdio: "inherit" });
  if (result.status !== 0) process.exit(result.status ?? 1);
}

function files(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...files(path));
    else out.push(path);
  }
  return out.sort();
}

buf(["lint"]);
if (!check) {
  buf(["generate"]);
  process.exit(0);
}
const work = mkdtempSync(join(tmpdir(), "moat-gen-"));
try {
  cpSync(join(root, "proto"), join(work, "proto"), { recursive: true });
  cpSync(join(root, "buf.yaml"), join(work, "buf.yaml"));
  writeFileSync(join(work, "buf.gen.yaml"), readFileSync(join(root, "buf.gen.yaml"), "utf8"));
  buf(["generate"], work);
  const fresh = join(work, "packages", "proto", "src", "gen");
  const a = files(committed).map((f) => relative(committed, f));
  const b = files(fresh).map((f) => relative(fresh, f));
  const stale =
    a.length !== b.length ||
    a.some((f, i) => f !== b[i] || readFileSync(join(committed, f), "utf8") !== readFileSync(join(fresh, f), "utf8"));
  if (stale) {
    process.stderr.write(
      "generated protobuf code is stale: run `npm run generate` and commit packages/proto/src/gen\n",
    );
    process.exit(1);
  }
  process.stderr.write("generated protobuf code is up to date\n");
} finally {
  rmSync(work, { recursive: true, force: true });
}
