/** The CLI's version, from its package.json (one source of truth for `moat --version` and the User-Agent). */
import { readFileSync } from "node:fs";

/** Version of this build of `moat`. */
export const VERSION: string = (
  JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }
).version;
