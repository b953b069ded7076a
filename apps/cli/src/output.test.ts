// Output helpers: table alignment, relative dates, terminal-safe values.
import { describe, expect, it } from "vitest";
import { clean, formatFields, formatTable, relativeTime, timestamp } from "./output.js";

describe("formatTable", () => {
  it("pads every column to its widest cell and trims trailing space", () => {
    expect(
      formatTable(
        ["NAME", "STATE", "LAST SEEN"],
        [
          ["a-long-name", "pending", "-"],
          ["b", "connected", "5s ago"],
        ],
      ),
    ).toBe(
      ["NAME         STATE      LAST SEEN", "a-long-name  pending    -", "b            connected  5s ago"].join("\n"),
    );
  });

  it("prints only the header for no rows", () => {
    expect(formatTable(["NAME", "TYPE"], [])).toBe("NAME  TYPE");
  });
});

describe("formatFields", () => {
  it("aligns values", () => {
    expect(
      formatFields([
        ["Name", "x"],
        ["Last seen", "y"],
      ]),
    ).toBe("Name:       x\nLast seen:  y");
  });
});

describe("relativeTime", () => {
  const now = new Date("2025-06-01T12:00:00.000Z");
  const ago = (ms: number) => new Date(now.getTime() - ms).toISOString();
  it.each([
    [ago(0), "just now"],
    [ago(12_000), "12s ago"],
    [ago(5 * 60_000 + 3000), "5m ago"],
    [ago(3 * 3600_000), "3h ago"],
    [ago(2 * 86_400_000), "2d ago"],
    [ago(-90_000), "in 1m"],
    [ago(400 * 86_400_000), "2024-04-27"],
  ])("%s -> %s", (iso, expected) => {
    expect(relativeTime(iso, now)).toBe(expected);
  });

  it("prints never-happened as -", () => {
    expect(relativeTime(null, now)).toBe("-");
    expect(timestamp(null, now)).toBe("-");
    expect(timestamp(ago(12_000), now)).toBe("2025-06-01T11:59:48.000Z (12s ago)");
  });
});

describe("clean", () => {
  it("replaces control characters and shows empty values as -", () => {
    expect(clean("host\u001b]0;pwned\u0007name")).toBe("host?]0;pwned?name");
    expect(clean("\u009b2J")).toBe("?2J");
    expect(clean("")).toBe("-");
    expect(clean(null)).toBe("-");
    expect(clean("edge-1")).toBe("edge-1");
  });
});
