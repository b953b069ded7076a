// The CLI's tests: in-process runs of `run()` and spawned `node dist/main.js`, each against a real
// control plane on a free port. Runnable alone from apps/cli or as a project of the root config.
import { defineProject } from "vitest/config";

export default defineProject({
  test: {
    name: "cli",
    include: ["src/**/*.test.ts"],
    // Starting a control plane and building dist/ (the process test) take a few seconds each.
    testTimeout: 30_000,
    hookTimeout: 120_000,
  },
});
