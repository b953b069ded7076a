// Config file location, atomic 0600 writes, and which server/key a command uses.
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { tempDir } from "@moat/testkit";
import {
  configPath,
  isExpired,
  normalizeServer,
  readConfig,
  resolveConnection,
  withoutCredential,
  writeConfig,
} from "./credentials.js";
import { CliError } from "./errors.js";

describe("configPath", () => {
  it("prefers $MOAT_CONFIG, then $XDG_CONFIG_HOME, then ~/.config", () => {
    expect(configPath({ MOAT_CONFIG: "/x/c.json", XDG_CONFIG_HOME: "/xdg" }, "/home/u")).toBe("/x/c.json");
    expect(configPath({ XDG_CONFIG_HOME: "/xdg" }, "/home/u")).toBe("/xdg/moat/config.json");
    expect(configPath({}, "/home/u")).toBe("/home/u/.config/moat/config.json");
    expect(configPath({ HOME: "/home/v" })).toBe("/home/v/.config/moat/config.json");
  });
});

describe("readConfig / writeConfig", () => {
  it("a missing file is an empty config", () => {
    expect(readConfig(join(tempDir(), "none.json"))).toEqual({});
  });

  it("writes atomically with mode 0600 in a 0700 directory, keeping unknown keys", () => {
    const dir = join(tempDir(), "moat");
    const path = join(dir, "config.json");
    writeConfig(path, { server: "http://a", apiKey: "k", future: { x: 1 } });
    writeConfig(path, { ...readConfig(path), apiKey: "k2" });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(JSON.parse(readFileSync(path, "utf8"))).toEqual({ server: "http://a", apiKey: "k2", future: { x: 1 } });
    // No temp files left behind.
    expect(readdirSync(dir)).toEqual(["config.json"]);
  });

  it("rejects corrupt or mistyped files with the path in the message", () => {
    const path = join(tempDir(), "config.json");
    for (const content of ["{", "[]", '{"server": 1}', '{"accessToken": {}}', '{"accessTokenExpiresAt": 1}']) {
      writeFileSync(path, content);
      expect(() => readConfig(path)).toThrow(CliError);
      expect(() => readConfig(path)).toThrow(path);
    }
  });
});

describe("normalizeServer", () => {
  it("accepts http(s) URLs and drops trailing slashes", () => {
    expect(normalizeServer("http://127.0.0.1:7070/")).toBe("http://127.0.0.1:7070");
    expect(normalizeServer(" https://moat.example.com/moat/ ")).toBe("https://moat.example.com/moat");
  });

  it.each(["127.0.0.1:7070", "ftp://x", "not a url", "https://u:p@x", "https://x/?a=1"])("rejects %s", (raw) => {
    expect(() => normalizeServer(raw)).toThrow(CliError);
  });
});

describe("resolveConnection", () => {
  const stored = { server: "http://a:1", apiKey: "stored-key" };

  it("flag over MOAT_SERVER over the file; MOAT_API_KEY over the file", () => {
    expect(resolveConnection({ env: {}, stored })).toEqual({
      server: "http://a:1",
      apiKey: "stored-key",
      keySource: "config",
    });
    expect(resolveConnection({ env: { MOAT_API_KEY: "env-key" }, stored })).toMatchObject({
      apiKey: "env-key",
      keySource: "env",
    });
    expect(resolveConnection({ env: { MOAT_SERVER: "http://b:2" }, stored, flagServer: "http://c:3" }).server).toBe(
      "http://c:3",
    );
    expect(resolveConnection({ env: { MOAT_SERVER: "http://b:2", MOAT_API_KEY: "e" }, stored }).server).toBe(
      "http://b:2",
    );
  });

  it("uses the stored key only for the stored server", () => {
    expect(resolveConnection({ env: {}, stored, flagServer: "http://a:1/" }).apiKey).toBe("stored-key");
    const other = resolveConnection({ env: {}, stored, flagServer: "http://evil:1" });
    expect(other.apiKey).toBeUndefined();
    expect(other.storedServer).toBe("http://a:1");
  });

  it("nothing configured: no server", () => {
    expect(resolveConnection({ env: {}, stored: {} })).toEqual({});
  });
});

describe("access tokens of a password login", () => {
  const stored = {
    server: "http://a:1",
    accessToken: "eyJ.token.sig",
    accessTokenId: "t1",
    accessTokenExpiresAt: "2030-01-01T00:00:00.000Z",
    email: "dana@example.com",
  };

  it("are used with the stored server only, and MOAT_API_KEY still wins", () => {
    expect(resolveConnection({ env: {}, stored })).toEqual({
      server: "http://a:1",
      accessToken: { value: "eyJ.token.sig", id: "t1", expiresAt: stored.accessTokenExpiresAt, email: stored.email },
    });
    const other = resolveConnection({ env: {}, stored, flagServer: "http://evil:1" });
    expect(other).toEqual({ server: "http://evil:1", storedServer: "http://a:1" });
    expect(resolveConnection({ env: { MOAT_API_KEY: "k" }, stored })).toEqual({
      server: "http://a:1",
      apiKey: "k",
      keySource: "env",
    });
  });

  it("without a stored expiry count as expired", () => {
    const { accessTokenExpiresAt: _dropped, ...noExpiry } = stored;
    const token = resolveConnection({ env: {}, stored: noExpiry }).accessToken!;
    expect(isExpired(token, new Date())).toBe(true);
  });

  it("expire at their stored expiry", () => {
    const expiresAt = "2030-01-01T00:00:00.000Z";
    expect(isExpired({ expiresAt }, new Date("2029-12-31T23:59:59.999Z"))).toBe(false);
    expect(isExpired({ expiresAt }, new Date(expiresAt))).toBe(true);
    expect(isExpired({ expiresAt: "garbage" }, new Date(0))).toBe(true);
  });

  it("are removed with the rest of the credential, keeping the server and unknown keys", () => {
    expect(withoutCredential({ ...stored, apiKey: "k", future: 1 })).toEqual({ server: "http://a:1", future: 1 });
  });
});
