#!/usr/bin/env node
/**
 * `moat` as a process: binds `run` to argv, the real streams and environment, and sets the exit
 * status. Everything else lives in cli.ts so tests can run the same code in-process.
 */
import { run } from "./cli.js";

// `moat agents list | head -1` closes stdout early; that is not an error worth a stack trace.
process.stdout.on("error", (error: NodeJS.ErrnoException) => {
  if (error.code === "EPIPE") process.exit(process.exitCode ?? 0);
  throw error;
});

process.exitCode = await run(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  stdin: process.stdin,
  env: process.env,
  onInterrupt: (handler) => {
    const signals = ["SIGINT", "SIGTERM"] as const;
    const once = () => {
      for (const s of signals) process.removeListener(s, once);
      handler();
    };
    for (const s of signals) process.on(s, once);
    return () => {
      for (const s of signals) process.removeListener(s, once);
    };
  },
});
