/**
 * A real, minimal OpenID Connect issuer on loopback for tests: discovery, JWKS, the authorization
 * code flow with PKCE (S256) and the device authorization flow, ID tokens signed with jose (RS256),
 * and key rotation. It "logs in" whichever user the test chose with `setUser`.
 */
import { createHash, randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { exportJWK, generateKeyPair, SignJWT, type JWK } from "jose";

export interface OidcUser {
  sub: string;
  email: string;
  emailVerified?: boolean;
  groups?: string[];
  name?: string;
}

export interface TestOidcIssuer {
  issuer: string;
  clientId: string;
  /** The user the next authorization or device approval logs in. */
  setUser(user: OidcUser): void;
  /** Signs an ID token for `user` directly (claims override defaults). */
  idToken(user: OidcUser, claims?: Record<string, unknown>): Promise<string>;
  /** New signing key; the old one leaves the JWKS unless `keepOld`. */
  rotateKey(keepOld?: boolean): Promise<string>;
  /** Approves a pending device code (what the user does in the browser). */
  approveDevice(userCode: string): void;
  close(): Promise<void>;
}

interface Key {
  kid: string;
  privateKey: Awaited<ReturnType<typeof generateKeyPair>>["privateKey"];
  jwk: JWK;
}

async function newKey(): Promise<Key> {
  const { privateKey, publicKey } = await generateKeyPair("RS256", { extractable: true });
  const kid = `k-${randomBytes(6).toString("hex")}`;
  return { kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: "RS256", use: "sig" } };
}

async function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  let body = "";
  for await (const chunk of req) {
    body += String(chunk);
    if (body.length > 65536) break;
  }
  return new URLSearchParams(body);
}

function json(res: ServerResponse, status: number, value: unknown): void {
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" }).end(JSON.stringify(value));
}

export async function startOidcIssuer(options: { clientId?: string } = {}): Promise<TestOidcIssuer> {
  const clientId = options.clientId ?? "moat-cli";
  let keys: Key[] = [await newKey()];
  let user: OidcUser = { sub: "u-1", email: "alice@example.com", emailVerified: true, groups: [] };
  const codes = new Map<string, { user: OidcUser; challenge: string; redirectUri: string; nonce?: string }>();
  const devices = new Map<string, { userCode: string; user?: OidcUser; interval: number }>();
  let issuer = "";

  async function sign(u: OidcUser, claims: Record<string, unknown> = {}): Promise<string> {
    const key = keys[keys.length - 1] as Key;
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({
      email: u.email,
      email_verified: u.emailVerified ?? true,
      groups: u.groups ?? [],
      name: u.name ?? u.email,
      ...claims,
    })
      .setProtectedHeader({ alg: "RS256", kid: key.kid, typ: "JWT" })
      .setIssuer((claims.iss as string) ?? issuer)
      .setAudience((claims.aud as string) ?? clientId)
      .setSubject(u.sub)
      .setIssuedAt(now)
      .setExpirationTime((claims.exp as number) ?? now + 300)
      .sign(key.privateKey);
  }

  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", issuer);
    const route = `${req.method} ${url.pathname}`;
    (async () => {
      switch (route) {
        case "GET /.well-known/openid-configuration":
          return json(res, 200, {
            issuer,
            authorization_endpoint: `${issuer}/authorize`,
            token_endpoint: `${issuer}/token`,
            device_authorization_endpoint: `${issuer}/device`,
            jwks_uri: `${issuer}/jwks`,
            response_types_supported: ["code"],
            grant_types_supported: ["authorization_code", "urn:ietf:params:oauth:grant-type:device_code"],
            code_challenge_methods_supported: ["S256"],
            id_token_signing_alg_values_supported: ["RS256"],
            subject_types_supported: ["public"],
            scopes_supported: ["openid", "email", "profile", "groups"],
          });
        case "GET /jwks":
          return json(res, 200, { keys: keys.map((k) => k.jwk) });
        case "GET /authorize": {
          const q = url.searchParams;
          if (
            q.get("client_id") !== clientId ||
            q.get("response_type") !== "code" ||
            q.get("code_challenge_method") !== "S256" ||
            !q.get("code_challenge")
          ) {
            return json(res, 400, { error: "invalid_request" });
          }
          const code = randomBytes(16).toString("hex");
          const nonce = q.get("nonce") ?? undefined;
          codes.set(code, {
            user,
            challenge: q.get("code_challenge") as string,
            redirectUri: q.get("redirect_uri") ?? "",
            ...(nonce ? { nonce } : {}),
          });
          const redirect = new URL(q.get("redirect_uri") ?? "");
          redirect.searchParams.set("code", code);
          if (q.get("state")) redirect.searchParams.set("state", q.get("state") as string);
          res.writeHead(302, { location: redirect.toString() }).end();
          return;
        }
        case "POST /device": {
          const form = await readForm(req);
          if (form.get("client_id") !== clientId) return json(res, 400, { error: "invalid_client" });
          const deviceCode = randomBytes(16).toString("hex");
          const userCode = randomBytes(3).toString("hex").toUpperCase();
          devices.set(deviceCode, { userCode, interval: 1 });
          return json(res, 200, {
            device_code: deviceCode,
            user_code: userCode,
            verification_uri: `${issuer}/activate`,
            verification_uri_complete: `${issuer}/activate?user_code=${userCode}`,
            expires_in: 300,
            interval: 1,
          });
        }
        case "POST /token": {
          const form = await readForm(req);
          if (form.get("client_id") !== clientId) return json(res, 401, { error: "invalid_client" });
          if (form.get("grant_type") === "authorization_code") {
            const entry = codes.get(form.get("code") ?? "");
            codes.delete(form.get("code") ?? "");
            const verifier = form.get("code_verifier") ?? "";
            if (
              !entry ||
              entry.redirectUri !== form.get("redirect_uri") ||
              createHash("sha256").update(verifier).digest("base64url") !== entry.challenge
            ) {
              return json(res, 400, { error: "invalid_grant" });
            }
            return json(res, 200, {
              token_type: "Bearer",
              access_token: randomBytes(16).toString("hex"),
              expires_in: 300,
              id_token: await sign(entry.user, entry.nonce ? { nonce: entry.nonce } : {}),
            });
          }
          if (form.get("grant_type") === "urn:ietf:params:oauth:grant-type:device_code") {
            const entry = devices.get(form.get("device_code") ?? "");
            if (!entry) return json(res, 400, { error: "expired_token" });
            if (!entry.user) return json(res, 400, { error: "authorization_pending" });
            devices.delete(form.get("device_code") ?? "");
            return json(res, 200, {
              token_type: "Bearer",
              access_token: randomBytes(16).toString("hex"),
              expires_in: 300,
              id_token: await sign(entry.user),
            });
          }
          return json(res, 400, { error: "unsupported_grant_type" });
        }
        default:
          return json(res, 404, { error: "not_found" });
      }
    })().catch((error: unknown) => json(res, 500, { error: String(error) }));
  });

  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  issuer = `http://127.0.0.1:${typeof address === "object" && address ? address.port : 0}`;

  return {
    issuer,
    clientId,
    setUser: (u) => (user = u),
    idToken: sign,
    async rotateKey(keepOld = false) {
      const key = await newKey();
      keys = keepOld ? [...keys, key] : [key];
      return key.kid;
    },
    approveDevice(userCode) {
      for (const entry of devices.values()) if (entry.userCode === userCode) entry.user = user;
    },
    close: () => new Promise((r) => server.close(() => r())),
  };
}
