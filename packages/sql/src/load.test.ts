import { describe, expect, it } from "vitest";
import { createClassifier, loadSqlParser } from "./index.js";

describe("loadSqlParser", () => {
  it("must be awaited before creating a classifier, and is idempotent", async () => {
    expect(() => createClassifier()).toThrow(/loadSqlParser/);
    const first = loadSqlParser();
    expect(loadSqlParser()).toBe(first);
    await first;
    await loadSqlParser();
    const result = createClassifier().classify("SELECT 1", { standardConformingStrings: true });
    expect(result.ok).toBe(true);
  });
});
