// One vitest run over every workspace project (each package/app/test folder is a project).
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    projects: ["packages/*", "apps/*", "test"],
  },
});
