/**
 * The CLI's side of OAuth 2.0 / OpenID Connect with the identity provider (not the control plane):
 * PKCE and the random `state` and `nonce` of a login, the authorization URL, and the form POSTs to
 * the issuer's token and device authorization endpoints, each with a timeout. OAuth errors become
 * `sso_failed` errors naming the issuer's error code; network failures `unreachable`. It never puts
 * a code, verifier or token in an error message, and knows nothing of commands, config or output.
 */
import { createHash, randomBytes } from "node:crypto";
import type { OidcConfig } from "./api-client.js";
import { describeNetworkError } from "./api-client.js";
import { CliError, CliErrorCode } from "./errors.js";
import { clean } from "./output.js";
import { VERSION } from "./version.js";

/** A fresh random value for `state`, `nonce` or a PKCE verifier: 32 bytes, base64url (43 characters). */
export function randomToken(): string {
  return randomBytes(32).toString("base64url");
}

/** A PKCE pair (RFC 7636, S256): the verifier stays with the CLI, the challenge goes to the browser. */
export interface Pkce {
  verifier: string;
  challenge: string;
}

/** Creates a PKCE verifier and its S256 challenge. */
export function createPkce(): Pkce {
  const verifier = randomToken();
  return { verifier, challenge: createHash("sha256").update(verifier).digest("base64url") };
}

/** The scopes to ask for: the control plane's, with `openid` first (without it there is no ID token). */
export function loginScopes(config: Pick<OidcConfig, "scopes">): string {
  return [...new Set(["openid", ...config.scopes])].join(" ");
}

/** The URL the browser opens: an authorization code request with PKCE, `state` and `nonce`. Pure. */
export function authorizationUrl(
  config: Pick<OidcConfig, "authorizationEndpoint" | "clientId" | "scopes">,
  request: { redirectUri: string; state: string; nonce: string; challenge: string },
): string {
  const url = new URL(config.authorizationEndpoint);
  const params: Record<string, string> = {
    response_type: "code",
    client_id: config.clientId,
    redirect_uri: request.redirectUri,
    scope: loginScopes(config),
    state: request.state,
    nonce: request.nonce,
    code_challenge: request.challenge,
    code_challenge_method: "S256",
  };
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
  return url.toString();
}

/**
 * Checks that the endpoints the control plane named are http(s) URLs before any of them is opened
 * or sent a code: the browser opener must never be handed another scheme.
 */
export function checkOidcConfig(config: OidcConfig): OidcConfig {
  const endpoints: [string, string | undefined][] = [
    ["authorizationEndpoint", config.authorizationEndpoint],
    ["tokenEndpoint", config.tokenEndpoint],
  ];
  if (config.deviceAuthorizationEndpoint !== undefined)
    endpoints.push(["deviceAuthorizationEndpoint", config.deviceAuthorizationEndpoint]);
  for (const [name, value] of endpoints) {
    if (!isHttpUrl(value)) {
      throw new CliError(
        CliErrorCode.unexpectedResponse,
        `the control plane's single sign-on settings name no usable ${name} (got "${clean(value ?? "")}")`,
        { hint: "ask an admin to check the oidc.issuer setting and the issuer's discovery document" },
      );
    }
  }
  if (!config.clientId)
    throw new CliError(CliErrorCode.unexpectedResponse, "the control plane named no OIDC client id");
  return config;
}

function isHttpUrl(value: string | undefined): boolean {
  try {
    const url = new URL(value ?? "");
    return url.protocol === "http:" || url.protocol === "https:";
  } catch {
    return false;
  }
}

/** The token endpoint's answer to a successful grant (only the fields the CLI uses). */
export interface TokenResponse {
  id_token?: string;
  token_type?: string;
}

/** The device authorization endpoint's answer (RFC 8628, section 3.2). */
export interface DeviceAuthorization {
  device_code: string;
  user_code: string;
  verification_uri: string;
  verification_uri_complete?: string;
  /** Seconds the device code stays valid. */
  expires_in: number;
  /** Seconds to wait between two polls (default 5). */
  interval?: number;
}

/** One poll of the token endpoint in the device flow. */
export type DevicePoll =
  | { kind: "token"; token: TokenResponse }
  | { kind: "pending" }
  /** The issuer asks to poll less often: 5 more seconds between polls (RFC 8628, section 3.5). */
  | { kind: "slow_down" };

/** An OAuth error answer: `error` and, optionally, a human `error_description`. */
interface OAuthErrorBody {
  error: string;
  error_description?: string;
}

function isOAuthError(value: unknown): value is OAuthErrorBody {
  return typeof value === "object" && value !== null && typeof (value as OAuthErrorBody).error === "string";
}

/** "access_denied (the user said no)", shortened and made terminal-safe: it comes from the issuer. */
export function describeOAuthError(error: string, description?: string | null): string {
  const short = (text: string) => clean(text.length > 200 ? `${text.slice(0, 200)}…` : text);
  return description ? `${short(error)} (${short(description)})` : short(error);
}

/** The identity provider's endpoints as the CLI calls them. Every method rejects with a `CliError`. */
export interface OidcClient {
  /** Redeems an authorization code with its PKCE verifier (authorization_code grant). */
  exchangeCode(input: { code: string; redirectUri: string; verifier: string }): Promise<TokenResponse>;
  /** Starts the device flow: a device code to poll with and a user code to show. */
  authorizeDevice(): Promise<DeviceAuthorization>;
  /** Asks once whether the user has approved the device code. */
  pollDevice(deviceCode: string): Promise<DevicePoll>;
}

/** Creates a client for the issuer named in `config`; `timeoutMs` bounds each request. */
export function createOidcClient(options: {
  config: OidcConfig;
  timeoutMs: number;
  /** Injected in tests; defaults to the global fetch. */
  fetch?: typeof fetch;
}): OidcClient {
  const { config, timeoutMs } = options;
  const doFetch = options.fetch ?? fetch;

  /** POSTs a form and returns the status and parsed JSON body (undefined when not JSON). */
  async function post(endpoint: string, form: Record<string, string>): Promise<{ status: number; body: unknown }> {
    let response: Response;
    let text: string;
    try {
      response = await doFetch(endpoint, {
        method: "POST",
        headers: {
          accept: "application/json",
          "content-type": "application/x-www-form-urlencoded",
          "user-agent": `moat-cli/${VERSION}`,
        },
        body: new URLSearchParams(form).toString(),
        // A redirected POST would resend the code (or device code) to wherever it points.
        redirect: "manual",
        signal: AbortSignal.timeout(timeoutMs),
      });
      text = await response.text();
    } catch (error) {
      throw new CliError(
        CliErrorCode.unreachable,
        `cannot reach the identity provider at ${clean(new URL(endpoint).origin)}: ${describeNetworkError(error, timeoutMs)}`,
        { cause: error },
      );
    }
    let body: unknown;
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch {
      body = undefined;
    }
    return { status: response.status, body };
  }

  function unexpected(what: string, status: number): CliError {
    return new CliError(
      CliErrorCode.ssoFailed,
      `the identity provider answered the ${what} request with HTTP ${status} and no OAuth answer`,
      { hint: "ask an admin to check the oidc.issuer setting of the control plane" },
    );
  }

  function tokenFrom(body: unknown, status: number): TokenResponse {
    if (status !== 200 || typeof body !== "object" || body === null) throw unexpected("token", status);
    const token = body as TokenResponse;
    if (typeof token.id_token !== "string" || !token.id_token) {
      throw new CliError(CliErrorCode.ssoFailed, "the identity provider returned no ID token", {
        hint: 'the client must be allowed the "openid" scope',
      });
    }
    return token;
  }

  return {
    async exchangeCode(input) {
      const { status, body } = await post(config.tokenEndpoint, {
        grant_type: "authorization_code",
        code: input.code,
        redirect_uri: input.redirectUri,
        client_id: config.clientId,
        code_verifier: input.verifier,
      });
      if (isOAuthError(body) && status >= 400) {
        throw new CliError(
          CliErrorCode.ssoFailed,
          `the identity provider refused to redeem the authorization code: ${describeOAuthError(body.error, body.error_description)}`,
        );
      }
      return tokenFrom(body, status);
    },

    async authorizeDevice() {
      const endpoint = config.deviceAuthorizationEndpoint;
      if (!endpoint) throw new CliError(CliErrorCode.usage, "the identity provider offers no device login");
      const { status, body } = await post(endpoint, { client_id: config.clientId, scope: loginScopes(config) });
      if (isOAuthError(body) && status >= 400) {
        throw new CliError(
          CliErrorCode.ssoFailed,
          `the identity provider refused to start a device login: ${describeOAuthError(body.error, body.error_description)}`,
        );
      }
      const device = body as Partial<DeviceAuthorization> | undefined;
      if (
        status !== 200 ||
        typeof device?.device_code !== "string" ||
        typeof device.user_code !== "string" ||
        typeof device.verification_uri !== "string"
      )
        throw unexpected("device authorization", status);
      return {
        device_code: device.device_code,
        user_code: device.user_code,
        verification_uri: device.verification_uri,
        ...(typeof device.verification_uri_complete === "string"
          ? { verification_uri_complete: device.verification_uri_complete }
          : {}),
        expires_in: typeof device.expires_in === "number" && device.expires_in > 0 ? device.expires_in : 300,
        ...(typeof device.interval === "number" && device.interval > 0 ? { interval: device.interval } : {}),
      };
    },

    async pollDevice(deviceCode) {
      const { status, body } = await post(config.tokenEndpoint, {
        grant_type: "urn:ietf:params:oauth:grant-type:device_code",
        device_code: deviceCode,
        client_id: config.clientId,
      });
      if (isOAuthError(body) && status >= 400) {
        switch (body.error) {
          case "authorization_pending":
            return { kind: "pending" };
          case "slow_down":
            return { kind: "slow_down" };
          case "expired_token":
            throw new CliError(CliErrorCode.ssoFailed, "the device code expired before the login was approved", {
              hint: "run `moat login --sso --device` again and approve it sooner",
            });
          case "access_denied":
            throw new CliError(CliErrorCode.ssoFailed, "the login was denied at the identity provider");
          default:
            throw new CliError(
              CliErrorCode.ssoFailed,
              `the identity provider refused the device login: ${describeOAuthError(body.error, body.error_description)}`,
            );
        }
      }
      return { kind: "token", token: tokenFrom(body, status) };
    },
  };
}
