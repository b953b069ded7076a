/**
 * @moat/policy: Moat's policy language and its one evaluator. Pure (no I/O, no clock): documents
 * in, verdicts out. Used by the control plane to validate, simulate and explain, and by the agent
 * to enforce.
 */
export * from "./document.js";
export * from "./engine.js";
export { ZonedClock } from "./match.js";

import { parsePolicyText, type PolicyDocument } from "./document.js";
import { compilePolicies, type CompiledPolicies } from "./engine.js";

/** Parses and compiles policy text in one step (throws PolicyError with every problem). */
export function compilePolicyText(
  text: string,
  source?: string,
): { documents: PolicyDocument[]; compiled: CompiledPolicies } {
  const documents = parsePolicyText(text, source);
  return { documents, compiled: compilePolicies(documents) };
}
export * from "./testing.js";
