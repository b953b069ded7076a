// One vitest run over the whole workspace: unit and REST/store tests beside the code (src/ only,
// never dist/), and the end-to-end project in test/ (its own config: real processes, longer timeouts).
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

const root = fileURLToPath(new URL(".", import.meta.url));

export default defineConfig({
  root,
  test: {
    projects: [
      { extends: true, test: { name: "packages", include: ["packages/*/src/**/*.test.ts"] } },
      {
        extends: true,
        test: { name: "apps", include: ["apps/*/src/**/*.test.ts"], testTimeout: 30_000, hookTimeout: 120_000 },
      },
      `${root}test`,
    ],
  },
});
