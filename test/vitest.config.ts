// End-to-end tests: real processes (control plane, agents, launcher), real ports, real databases.
import { defineProject } from "vitest/config";

export default defineProject({
  test: {
    name: "e2e",
    include: ["e2e/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Each file starts several processes; on a 2-core machine they are more reliable one file at a time.
    fileParallelism: false,
  },
});
