// Bundles the compiled agent (dist/main.js and everything it imports, but libpg-query) into one
// file, dist/moat-agent.mjs: what `moat-agent`, `npm start`, the end-to-end tests and the benches
// run. One module instead of ~1 000 saves ~15 MiB of resident memory (Node keeps every module's
// source, its loader records and their package metadata): measured with bench/pg-proxy.mjs, idle
// 104 -> 89-94 MiB, with 200 sessions 130 -> 110 MiB. libpg-query stays outside: its WASM loader
// finds the .wasm next to its own file.
import { build } from "esbuild";
import { fileURLToPath } from "node:url";
import { readFileSync, writeFileSync } from "node:fs";

const dist = fileURLToPath(new URL("../dist/", import.meta.url));

const options = {
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  external: ["libpg-query"],
  // Some bundled CommonJS packages call require() for Node's built-ins.
  banner: {
    js: 'import { createRequire as __moatCreateRequire } from "node:module";\nconst require = __moatCreateRequire(import.meta.url);',
  },
  legalComments: "none",
  logLevel: "warning",
};
await build({ ...options, entryPoints: [`${dist}main.js`], outfile: `${dist}moat-agent.mjs` });
// The classifier pool's worker (@moat/sql's classifier-pool.js looks for it beside its own code,
// which is moat-agent.mjs once bundled).
const sqlDist = fileURLToPath(new URL(".", import.meta.resolve("@moat/sql")));
await build({ ...options, entryPoints: [`${sqlDist}classify-worker.js`], outfile: `${dist}classify-worker.js` });

// V8 keeps a script's source in memory, as one byte per character only when every character is
// Latin-1: the few non-ASCII characters esbuild leaves (in comments; it escapes them in strings)
// would double the 3 MB source's footprint. Escaped here (harmless in a comment).
for (const out of [`${dist}moat-agent.mjs`, `${dist}classify-worker.js`]) {
  const text = readFileSync(out, "utf8");
  const ascii = text.replace(/[\u0080-\u{10ffff}]/gu, (c) => `\\u{${c.codePointAt(0).toString(16)}}`);
  if (ascii !== text) writeFileSync(out, ascii);
}
