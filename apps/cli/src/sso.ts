/**
 * The two ways `moat login --sso` gets an ID token from the identity provider: the browser flow
 * (authorization code with PKCE, the browser coming back to a one-shot server on 127.0.0.1) and the
 * device flow (a code the user enters on any device, polled for). Owns what the user is told to do
 * and how long the CLI waits; the control plane's side (the exchange for a Moat token) and storing
 * the result belong to `commands/session.ts`. Never prints a code or token.
 */
import { spawn } from "node:child_process";
import type { OidcConfig } from "./api-client.js";
import { CliError, CliErrorCode } from "./errors.js";
import { authorizationUrl, createOidcClient, createPkce, randomToken, type OidcClient } from "./oidc-client.js";
import { clean, type Output } from "./output.js";
import { startCallbackServer } from "./sso-callback.js";

/** Seconds to wait for the browser (or the device approval) unless MOAT_SSO_TIMEOUT_SECONDS says otherwise. */
export const DEFAULT_SSO_TIMEOUT_SECONDS = 300;

/** Added to the device flow's polling interval each time the issuer answers `slow_down` (RFC 8628). */
const SLOW_DOWN_STEP_MS = 5000;

/** What the identity provider's login yields: the ID token, and the nonce it must carry (browser flow). */
export interface IdTokenGrant {
  idToken: string;
  nonce?: string;
}

/** The wait for the user, from `MOAT_SSO_TIMEOUT_SECONDS` (default 300 s), in milliseconds. */
export function ssoTimeoutMs(env: Record<string, string | undefined>): number {
  const raw = env.MOAT_SSO_TIMEOUT_SECONDS;
  if (raw === undefined || raw === "") return DEFAULT_SSO_TIMEOUT_SECONDS * 1000;
  const seconds = Number(raw);
  if (!Number.isFinite(seconds) || seconds <= 0)
    throw new CliError(
      CliErrorCode.usage,
      `MOAT_SSO_TIMEOUT_SECONDS must be a positive number of seconds (got "${clean(raw)}")`,
    );
  return Math.round(seconds * 1000);
}

/** "5m", "90s": how long the CLI waits, as the user reads it. */
function duration(ms: number): string {
  const seconds = Math.round(ms / 1000);
  return seconds >= 60 && seconds % 60 === 0 ? `${seconds / 60}m` : `${seconds}s`;
}

/**
 * Opens `url` in the user's browser, best effort: failures (no desktop, no opener installed) are
 * ignored, since the URL is printed anyway. Only http(s) URLs are opened. On Windows it goes through
 * `rundll32 url.dll,FileProtocolHandler` rather than `cmd /c start`, which would split the URL at
 * its `&`s.
 */
export function openBrowser(url: string): void {
  if (!/^https?:\/\//i.test(url)) return;
  const [command, args]: [string, string[]] =
    process.platform === "darwin"
      ? ["open", [url]]
      : process.platform === "win32"
        ? ["rundll32", ["url.dll,FileProtocolHandler", url]]
        : ["xdg-open", [url]];
  try {
    const child = spawn(command, args, { stdio: "ignore", detached: true });
    child.on("error", () => undefined);
    child.unref();
  } catch {
    // Best effort: the URL is on the screen.
  }
}

/** What a flow needs: where to print, the issuer, and how long to wait. */
export interface SsoFlowDeps {
  out: Output;
  config: OidcConfig;
  /** Bounds each request to the identity provider. */
  requestTimeoutMs: number;
  /** Bounds the wait for the user (browser callback or device approval). */
  waitTimeoutMs: number;
  /** Injected in tests; defaults to the global fetch. */
  fetch?: typeof fetch;
  /** Injected in tests (the device flow's pauses); defaults to a timer. */
  sleep?: (ms: number) => Promise<void>;
  /** Injected in tests; defaults to the real clock. */
  now?: () => number;
}

function issuerOf(deps: SsoFlowDeps): OidcClient {
  return createOidcClient({
    config: deps.config,
    timeoutMs: deps.requestTimeoutMs,
    ...(deps.fetch ? { fetch: deps.fetch } : {}),
  });
}

/**
 * Instructions the user must see: on stdout with the rest of the login's text, on stderr under
 * `--json` (stdout then holds only the result document).
 */
function instruct(out: Output, text: string): void {
  if (out.json) out.note(text);
  else out.text(text);
}

/**
 * The browser flow: a callback server on 127.0.0.1, the authorization URL printed (and opened unless
 * `openBrowser` is absent), the code checked against `state` and redeemed with the PKCE verifier.
 */
export async function browserFlow(deps: SsoFlowDeps & { openBrowser?: (url: string) => void }): Promise<IdTokenGrant> {
  const { out } = deps;
  const state = randomToken();
  const nonce = randomToken();
  const pkce = createPkce();
  const callback = await startCallbackServer({ state, timeoutMs: deps.waitTimeoutMs });
  let code: string;
  try {
    const url = authorizationUrl(deps.config, {
      redirectUri: callback.redirectUri,
      state,
      nonce,
      challenge: pkce.challenge,
    });
    instruct(
      out,
      deps.openBrowser
        ? `Log in with single sign-on in your browser (if it does not open, open this URL on this machine):\n\n  ${url}\n`
        : `Open this URL in a browser on this machine to log in with single sign-on:\n\n  ${url}\n`,
    );
    out.note(`Waiting up to ${duration(deps.waitTimeoutMs)} for the browser to come back (Ctrl-C cancels)...`);
    deps.openBrowser?.(url);
    code = await callback.code;
  } finally {
    await callback.close();
  }
  const token = await issuerOf(deps).exchangeCode({ code, redirectUri: callback.redirectUri, verifier: pkce.verifier });
  return { idToken: token.id_token as string, nonce };
}

/**
 * The device flow (RFC 8628): a user code shown here and entered at the issuer on any device, and
 * the token endpoint polled every `interval` seconds (5 more after each `slow_down`) until the user
 * approves, denies, or the code expires, at most `waitTimeoutMs`.
 */
export async function deviceFlow(deps: SsoFlowDeps): Promise<IdTokenGrant> {
  const { out } = deps;
  if (!deps.config.deviceAuthorizationEndpoint) {
    throw new CliError(CliErrorCode.usage, "the identity provider does not offer device login", {
      hint: "log in without --device (in a browser on this machine)",
    });
  }
  const sleep = deps.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const now = deps.now ?? Date.now;
  const issuer = issuerOf(deps);
  const device = await issuer.authorizeDevice();
  const waitMs = Math.min(device.expires_in * 1000, deps.waitTimeoutMs);
  const deadline = now() + waitMs;
  instruct(
    out,
    device.verification_uri_complete
      ? `To log in with single sign-on, open this URL on any device and approve the login:\n\n  ${clean(device.verification_uri_complete)}\n\n` +
          `(or open ${clean(device.verification_uri)} and enter the code ${clean(device.user_code)})\n`
      : `To log in with single sign-on, open ${clean(device.verification_uri)} on any device and enter the code:\n\n  ${clean(device.user_code)}\n`,
  );
  out.note(`Waiting up to ${duration(waitMs)} for the login to be approved (Ctrl-C cancels)...`);

  let intervalMs = Math.max(1, device.interval ?? 5) * 1000;
  for (;;) {
    await sleep(intervalMs);
    const poll = await issuer.pollDevice(device.device_code);
    if (poll.kind === "token") return { idToken: poll.token.id_token as string };
    if (poll.kind === "slow_down") intervalMs += SLOW_DOWN_STEP_MS;
    if (now() + intervalMs > deadline) {
      throw new CliError(CliErrorCode.ssoFailed, `the login was not approved within ${duration(waitMs)}`, {
        hint: "run `moat login --sso --device` again",
      });
    }
  }
}
