/**
 * Keeps V8 from recompiling libpg-query's WebAssembly with its optimizing compiler (TurboFan).
 *
 * Measured on our 2-core machines: after the first few parses V8's dynamic tiering spends more than
 * a second of background CPU compiling the parser's huge functions (competing with the proxied
 * traffic for the cores) and the compiled code adds ~85 MB of resident memory, while the baseline
 * (Liftoff) code is as fast or faster for our use — statements are classified once per shape and
 * then served from a cache. With Liftoff only, RSS after loading and parsing stays ~65 MB instead
 * of ~150 MB and no compilation runs in the background.
 *
 * Imported by parser.ts, which imports libpg-query only when the parser is loaded (so also in the
 * agent's bundle, where static imports of external packages would be evaluated first): the flag
 * must be set before libpg-query compiles its WASM. Process-wide (it applies to any WASM compiled
 * afterwards).
 */
import { setFlagsFromString } from "node:v8";

if (process.env.MOAT_WASM_TIER_UP !== "1") setFlagsFromString("--liftoff-only");
