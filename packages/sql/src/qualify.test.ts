import { describe, expect, it } from "vitest";
import { pathShadowsCatalog, qualifyTables } from "./index.js";

const ctx = { searchPath: ["$user", "public"], user: "alice" };

describe("qualifyTables", () => {
  it("keeps qualified names as the parser produced them", () => {
    expect(qualifyTables([{ schema: "sales", name: "Orders" }], ctx)).toEqual(["sales.Orders"]);
  });

  it("reports an unqualified name once per schema it could resolve to, $user replaced", () => {
    expect(qualifyTables([{ name: "orders" }], ctx)).toEqual(["alice.orders", "public.orders"]);
    expect(qualifyTables([{ name: "orders" }], { searchPath: ['"$user"'.slice(1, -1), "app"], user: "bob" })).toEqual([
      "bob.orders",
      "app.orders",
    ]);
  });

  it("drops catalog tables", () => {
    expect(
      qualifyTables(
        [
          { schema: "pg_catalog", name: "pg_authid" },
          { schema: "information_schema", name: "tables" },
          { name: "pg_class" },
          { name: "pg_stat_activity" },
        ],
        ctx,
      ),
    ).toEqual([]);
  });

  it("resolves pg_catalog names to user schemas listed before an explicit pg_catalog", () => {
    const path = { searchPath: ["evil", "pg_catalog", "public"], user: "alice" };
    expect(qualifyTables([{ name: "pg_class" }], path)).toEqual(["evil.pg_class"]);
    expect(qualifyTables([{ name: "pg_class" }], { searchPath: ["pg_catalog", "evil"], user: "a" })).toEqual([]);
    // A name pg_catalog does not have resolves anywhere on the path (catalog schemas dropped).
    expect(qualifyTables([{ name: "orders" }], path)).toEqual(["evil.orders", "public.orders"]);
  });

  it("deduplicates", () => {
    expect(
      qualifyTables([{ name: "t" }, { schema: "public", name: "t" }, { name: "t" }], {
        searchPath: ["public"],
        user: "a",
      }),
    ).toEqual(["public.t"]);
  });

  it("yields nothing for unqualified names when the path is empty", () => {
    expect(qualifyTables([{ name: "t" }], { searchPath: [], user: "a" })).toEqual([]);
  });

  it("tells when a path lets another schema's functions replace the built-ins", () => {
    expect(pathShadowsCatalog(["public"])).toBe(false);
    expect(pathShadowsCatalog(["pg_catalog", "public"])).toBe(false);
    expect(pathShadowsCatalog(["pg_temp", "pg_catalog", "public"])).toBe(false);
    expect(pathShadowsCatalog(["pg_temp_3", "pg_catalog"])).toBe(false);
    expect(pathShadowsCatalog(["public", "pg_catalog"])).toBe(true);
    expect(pathShadowsCatalog(["$user", "pg_catalog"])).toBe(true);
    expect(pathShadowsCatalog(["pg_temp", "evil", "pg_catalog"])).toBe(true);
  });
});
