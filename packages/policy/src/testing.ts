/**
 * Runs the test cases policies carry (`spec.tests`): each request is evaluated against the whole
 * compiled set, so interactions between policies are tested too. Pure; `now` is the default time
 * of cases that give none.
 */
import type { PolicyDocument, PolicyTest } from "./document.js";
import { evaluate, type CompiledPolicies, type PolicyRequest, type Verdict } from "./engine.js";

export interface PolicyTestResult {
  policy: string;
  name: string;
  passed: boolean;
  expected: PolicyTest["expect"];
  expectedRule?: string;
  verdict: Verdict;
}

/** The engine request a test case describes. */
export function testRequest(test: PolicyTest, now: number): PolicyRequest {
  const r = test.request;
  return {
    user: r.user,
    groups: r.groups ?? [],
    serviceAccount: r.serviceAccount ?? false,
    resource: { name: r.resource, type: r.resourceType ?? "postgres", labels: r.labels ?? {} },
    action: r.action,
    ...(r.tables ? { tables: r.tables } : {}),
    ...(r.command !== undefined ? { command: r.command } : {}),
    ...(r.sourceIp ? { sourceIp: r.sourceIp } : {}),
    ...(r.reason !== undefined ? { reason: r.reason } : {}),
    now: r.time ? Date.parse(r.time) : now,
  };
}

export function runPolicyTests(
  documents: readonly PolicyDocument[],
  compiled: CompiledPolicies,
  now: number,
): PolicyTestResult[] {
  const results: PolicyTestResult[] = [];
  for (const doc of documents) {
    for (const test of doc.spec.tests ?? []) {
      const verdict = evaluate(compiled, testRequest(test, now), { explain: true });
      const passed =
        verdict.effect === test.expect && (test.expectRule === undefined || verdict.rule === test.expectRule);
      results.push({
        policy: doc.metadata.name,
        name: test.name,
        passed,
        expected: test.expect,
        ...(test.expectRule ? { expectedRule: test.expectRule } : {}),
        verdict,
      });
    }
  }
  return results;
}
