import { X509Certificate } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  certificateFingerprint,
  createCertificateAuthority,
  describeCertificate,
  issueServerCertificate,
} from "./index.js";

describe("pki", () => {
  it("issues a server certificate that verifies against its CA", async () => {
    const ca = await createCertificateAuthority("Moat test CA");
    const server = await issueServerCertificate(ca, ["localhost", "127.0.0.1", "::1"]);
    const caCert = new X509Certificate(ca.certPem);
    const leaf = new X509Certificate(server.certPem);
    expect(caCert.ca).toBe(true);
    expect(leaf.ca).toBe(false);
    expect(leaf.verify(caCert.publicKey)).toBe(true);
    expect(leaf.checkHost("localhost")).toBe("localhost");
    expect(leaf.checkIP("127.0.0.1")).toBe("127.0.0.1");
    expect(describeCertificate(server.certPem).subjectAltNames).toEqual(
      expect.arrayContaining(["localhost", "127.0.0.1"]),
    );
  });

  it("fingerprints are stable and differ between CAs", async () => {
    const a = await createCertificateAuthority("a");
    const b = await createCertificateAuthority("b");
    expect(certificateFingerprint(a.certPem)).toMatch(/^[0-9a-f]{64}$/);
    expect(certificateFingerprint(a.certPem)).toBe(certificateFingerprint(new X509Certificate(a.certPem).raw));
    expect(certificateFingerprint(a.certPem)).not.toBe(certificateFingerprint(b.certPem));
  });
});
