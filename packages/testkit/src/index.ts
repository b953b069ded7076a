/**
 * @moat/testkit: real services for tests. Starts throwaway PostgreSQL servers (the Debian
 * postgresql package's binaries), finds free loopback ports, makes temp dirs, waits for
 * conditions, and runs throwaway NATS servers (nats-server.ts). Tests only; never imported by product code.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** A free TCP port on 127.0.0.1 (bound and released; tiny race window, fine for tests). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() =>
        typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port")),
      );
    });
  });
}

/** A new empty directory under the OS temp dir. */
export function tempDir(prefix = "moat-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Polls `check` until it returns a truthy value or `timeoutMs` passes. */
export async function waitFor<T>(
  check: () => Promise<T> | T,
  timeoutMs = 10_000,
  intervalMs = 50,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value as NonNullable<T>;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`condition not met within ${timeoutMs} ms`, { cause: lastError });
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Directory holding initdb/pg_ctl of the newest installed PostgreSQL. */
export function postgresBinDir(): string {
  const base = "/usr/lib/postgresql";
  if (!existsSync(base)) throw new Error("PostgreSQL is not installed (apt-get install postgresql)");
  const versions = readdirSync(base).sort((a, b) => Number(b) - Number(a));
  if (versions.length === 0) throw new Error("PostgreSQL is not installed (apt-get install postgresql)");
  return join(base, versions[0] as string, "bin");
}

export interface TestPostgres {
  port: number;
  /** Superuser connection string to database `postgres`. */
  url: string;
  /** A new empty database; returns its connection string. */
  createDatabase(name: string): Promise<string>;
  /** Runs SQL as the superuser over the server's Unix socket (works whatever pg_hba says for TCP). */
  sql(sql: string, db?: string): Promise<string>;
  stop(): Promise<void>;
}

/**
 * Starts a throwaway PostgreSQL cluster on a free loopback port (trust auth, superuser
 * `postgres`). As root, the server runs as the `postgres` OS user (initdb refuses root).
 */
export interface StartPostgresOptions {
  /** `host` lines of pg_hba.conf (local socket connections stay trusted). Default: trust everything. */
  hba?: string[];
  /** Serve TLS with this certificate and key. */
  ssl?: { certPem: string; keyPem: string };
  /** Extra `-c name=value` settings. */
  settings?: Record<string, string>;
}

export async function startPostgres(options: StartPostgresOptions = {}): Promise<TestPostgres> {
  const bin = postgresBinDir();
  const dir = tempDir("moat-pg-");
  chmodSync(dir, 0o755);
  const asRoot = process.getuid?.() === 0;
  const asPostgres = (cmd: string, args: string[]) =>
    asRoot ? run("runuser", ["-u", "postgres", "--", cmd, ...args]) : run(cmd, args);
  if (asRoot) {
    const { stdout } = await run("id", ["-u", "postgres"]);
    const { stdout: gid } = await run("id", ["-g", "postgres"]);
    chownSync(dir, Number(stdout.trim()), Number(gid.trim()));
  }
  const data = join(dir, "data");
  await asPostgres(join(bin, "initdb"), ["-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]);
  const owner = asRoot
    ? {
        uid: Number((await run("id", ["-u", "postgres"])).stdout.trim()),
        gid: Number((await run("id", ["-g", "postgres"])).stdout.trim()),
      }
    : undefined;
  const own = (file: string, content: string, mode: number) => {
    writeFileSync(file, content, { mode });
    if (owner) chownSync(file, owner.uid, owner.gid);
  };
  const extra: string[] = [];
  if (options.hba) own(join(data, "pg_hba.conf"), ["local all all trust", ...options.hba, ""].join("\n"), 0o600);
  if (options.ssl) {
    own(join(data, "server.crt"), options.ssl.certPem, 0o644);
    own(join(data, "server.key"), options.ssl.keyPem, 0o600);
    extra.push("-c", "ssl=on", "-c", "ssl_cert_file=server.crt", "-c", "ssl_key_file=server.key");
  }
  for (const [k, v] of Object.entries(options.settings ?? {})) extra.push("-c", `${k}=${v}`);
  const port = await freePort();
  const child: ChildProcess = spawn(
    asRoot ? "runuser" : join(bin, "postgres"),
    [
      ...(asRoot ? ["-u", "postgres", "--", join(bin, "postgres")] : []),
      "-D",
      data,
      "-p",
      String(port),
      "-k",
      dir,
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      "fsync=off",
      "-c",
      "synchronous_commit=off",
      "-c",
      "full_page_writes=off",
      ...extra,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000);
  });
  const url = `postgresql://postgres@127.0.0.1:${port}/postgres`;
  const psql = (sql: string, db = "postgres") =>
    run("psql", ["-h", dir, "-p", String(port), "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-Atc", sql]);
  try {
    await waitFor(async () => (await psql("select 1")).stdout.trim() === "1", 15_000, 100);
  } catch (error) {
    child.kill("SIGKILL");
    throw new Error(`PostgreSQL did not start: ${stderr}`, { cause: error });
  }
  return {
    port,
    url,
    async sql(sql: string, db = "postgres") {
      return (await psql(sql, db)).stdout;
    },
    async createDatabase(name: string) {
      if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error("database name must be a plain identifier");
      await psql(`CREATE DATABASE ${name}`);
      return `postgresql://postgres@127.0.0.1:${port}/${name}`;
    },
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        await asPostgres(join(bin, "pg_ctl"), ["-D", data, "-m", "immediate", "-w", "stop"]).catch(() => undefined);
        await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
        if (child.exitCode === null) child.kill("SIGKILL");
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
export * from "./oidc-issuer.js";
export * from "./nats-server.js";
