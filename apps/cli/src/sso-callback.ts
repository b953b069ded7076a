/**
 * The one-shot HTTP server on 127.0.0.1 that receives the browser back from the identity provider
 * (the loopback redirect of RFC 8252) during `moat login --sso`. It owns the listening socket, the
 * check of `state`, the page shown in the browser and the wait's time limit; it accepts exactly one
 * callback and is closed on every path. It never prints, and never echoes the issuer's text into
 * the page.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { describeOAuthError } from "./oidc-client.js";
import { CliError, CliErrorCode } from "./errors.js";

/** The path of the redirect URI (`http://127.0.0.1:PORT/callback`). */
export const CALLBACK_PATH = "/callback";

/** A callback server waiting for one browser redirect. */
export interface CallbackServer {
  /** `http://127.0.0.1:PORT/callback`, to register in the authorization request. */
  readonly redirectUri: string;
  /**
   * The authorization code, once the browser comes back with this login's `state`; rejects with an
   * `sso_failed` error when the issuer reports an error, the state differs, or time runs out.
   */
  readonly code: Promise<string>;
  /** Stops listening and drops open connections (idempotent). */
  close(): Promise<void>;
}

const PAGE_STYLE = "font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;line-height:1.5";

function page(title: string, message: string): string {
  return (
    `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${title}</title></head>` +
    `<body style="${PAGE_STYLE}"><h1>${title}</h1><p>${message}</p></body></html>`
  );
}

const SUCCESS_PAGE = page("Moat: signed in", "The login continues in your terminal. You can close this tab.");
const FAILURE_PAGE = page(
  "Moat: sign-in failed",
  "The login was not completed. Your terminal says why; you can close this tab.",
);

/**
 * Starts listening on an ephemeral port of 127.0.0.1 (not "localhost", which may resolve to ::1 while
 * the issuer redirects to the IPv4 address), for one callback carrying `state`, for at most `timeoutMs`.
 */
export async function startCallbackServer(options: { state: string; timeoutMs: number }): Promise<CallbackServer> {
  let settle: { resolve: (code: string) => void; reject: (error: CliError) => void } | undefined;
  const code = new Promise<string>((resolve, reject) => (settle = { resolve, reject }));
  // The caller may close before awaiting `code` (an error while printing): never an unhandled rejection.
  code.catch(() => undefined);
  let done = false;

  function finish(outcome: { code: string } | { error: CliError }): void {
    if (done) return;
    done = true;
    clearTimeout(timer);
    if ("code" in outcome) settle?.resolve(outcome.code);
    else settle?.reject(outcome.error);
  }

  function answer(res: ServerResponse, status: number, html: string, then?: () => void): void {
    res.writeHead(status, {
      "content-type": "text/html; charset=utf-8",
      "cache-control": "no-store",
      "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'",
      "referrer-policy": "no-referrer",
      // The socket closes with the answer, so closing the server never waits for the browser.
      connection: "close",
    });
    // The login settles once the page is written, so closing the server cannot cut it short.
    res.end(html, then);
  }

  function onRequest(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    if (url.pathname !== CALLBACK_PATH) {
      // Browsers ask for /favicon.ico and the like: not an answer to the login.
      res.writeHead(404, { "content-type": "text/plain", connection: "close" }).end("not found\n");
      return;
    }
    if (req.method !== "GET") {
      res.writeHead(405, { allow: "GET", "content-type": "text/plain", connection: "close" }).end("use GET\n");
      return;
    }
    if (done) {
      answer(res, 409, FAILURE_PAGE);
      return;
    }
    const params = url.searchParams;
    const error = params.get("error");
    if (params.get("state") !== options.state) {
      // Checked before anything else the request says: a page that is not this login's must not be able
      // to end it with its own error or code (login CSRF).
      const failure = new CliError(
        CliErrorCode.ssoFailed,
        "the browser came back with the state of another login: refused (it may be a forged request)",
        { hint: "run `moat login --sso` again, and use the URL it prints" },
      );
      answer(res, 400, FAILURE_PAGE, () => finish({ error: failure }));
      return;
    }
    if (error) {
      const failure = new CliError(
        CliErrorCode.ssoFailed,
        error === "access_denied"
          ? `the identity provider denied the login: ${describeOAuthError(error, params.get("error_description"))}`
          : `the identity provider refused the login: ${describeOAuthError(error, params.get("error_description"))}`,
      );
      answer(res, 400, FAILURE_PAGE, () => finish({ error: failure }));
      return;
    }
    const authorizationCode = params.get("code");
    if (!authorizationCode) {
      const failure = new CliError(
        CliErrorCode.ssoFailed,
        "the identity provider sent the browser back without a code",
      );
      answer(res, 400, FAILURE_PAGE, () => finish({ error: failure }));
      return;
    }
    answer(res, 200, SUCCESS_PAGE, () => finish({ code: authorizationCode }));
  }

  const server = createServer(onRequest);
  // A browser that connects and stalls must not hold the login open past these limits.
  server.requestTimeout = 30_000;
  server.headersTimeout = 10_000;
  const timer = setTimeout(() => {
    const seconds = Math.round(options.timeoutMs / 1000);
    finish({
      error: new CliError(CliErrorCode.ssoFailed, `no answer from the browser within ${seconds}s`, {
        hint: "run `moat login --sso` again; on a machine without a browser, use --device",
      }),
    });
  }, options.timeoutMs);

  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => {
        server.removeListener("error", reject);
        resolve();
      });
    });
  } catch (error) {
    clearTimeout(timer);
    throw new CliError(
      CliErrorCode.ssoFailed,
      `cannot listen on 127.0.0.1 for the browser: ${(error as Error).message}`,
      {
        hint: "use --device to log in without a local callback",
        cause: error,
      },
    );
  }
  const port = (server.address() as AddressInfo).port;

  let closed: Promise<void> | undefined;
  return {
    redirectUri: `http://127.0.0.1:${port}${CALLBACK_PATH}`,
    code,
    close() {
      closed ??= new Promise<void>((resolve) => {
        finish({ error: new CliError(CliErrorCode.aborted, "the login was cancelled") });
        server.close(() => resolve());
        // Idle keep-alive sockets (a browser's preconnect) would otherwise keep the server open.
        server.closeAllConnections();
      });
      return closed;
    },
  };
}
