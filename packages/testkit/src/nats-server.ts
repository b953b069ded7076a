/**
 * A throwaway NATS server with JetStream (the Debian `nats-server` package's binary) on a free
 * loopback port, with its own store directory. Stop it and start another on the same port and
 * directory to simulate an outage: JetStream's streams survive.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { connect as tcpConnect } from "node:net";
import { freePort, tempDir, waitFor } from "./index.js";

export interface TestNatsServer {
  port: number;
  /** nats://127.0.0.1:<port> */
  url: string;
  /** JetStream's store directory (kept by `stop`, removed by `destroy`). */
  storeDir: string;
  /** Stops the server (SIGKILL when `hard`), keeping its store directory. */
  stop(options?: { hard?: boolean }): Promise<void>;
  /** Stops it and removes the store directory. */
  destroy(): Promise<void>;
}

export interface StartNatsOptions {
  port?: number;
  storeDir?: string;
  /** Extra command-line arguments (e.g. `--user`, `--pass`, `--auth`). */
  args?: string[];
}

/** Path of the nats-server binary, or an error saying how to install it. */
export function natsServerBinary(): string {
  for (const path of ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"])
    if (existsSync(path)) return path;
  throw new Error("nats-server is not installed (apt-get install nats-server)");
}

/** Resolves when a NATS server on `port` sends its INFO greeting. */
function greets(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tcpConnect({ host: "127.0.0.1", port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once("data", (chunk: Buffer) => done(chunk.toString().startsWith("INFO ")));
    socket.once("error", () => done(false));
  });
}

export async function startNatsServer(options: StartNatsOptions = {}): Promise<TestNatsServer> {
  const binary = natsServerBinary();
  const port = options.port ?? (await freePort());
  const storeDir = options.storeDir ?? tempDir("moat-nats-");
  const child: ChildProcess = spawn(
    binary,
    ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", storeDir, ...(options.args ?? [])],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000);
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  try {
    await waitFor(async () => {
      if (child.exitCode !== null) throw new Error(`nats-server exited: ${stderr}`);
      return greets(port);
    }, 15_000);
  } catch (error) {
    child.kill("SIGKILL");
    throw new Error(`nats-server did not start: ${stderr}`, { cause: error });
  }
  const stop = async (stopOptions: { hard?: boolean } = {}) => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill(stopOptions.hard ? "SIGKILL" : "SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGKILL");
        await exited;
      }
    }
  };
  return {
    port,
    url: `nats://127.0.0.1:${port}`,
    storeDir,
    stop,
    async destroy() {
      await stop({ hard: true });
      rmSync(storeDir, { recursive: true, force: true });
    },
  };
}
