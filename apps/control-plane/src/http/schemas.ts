/** TypeBox schemas shared by several routes (they also name the components of the OpenAPI document). */
import { Type, type Static } from "@sinclair/typebox";

export const ProblemSchema = Type.Object(
  {
    type: Type.String(),
    title: Type.String(),
    status: Type.Integer(),
    code: Type.String({ description: "Stable machine-readable error code" }),
    detail: Type.String(),
    instance: Type.Optional(Type.String()),
    errors: Type.Optional(Type.Array(Type.Object({ field: Type.String(), message: Type.String() }))),
  },
  { $id: "Problem", description: "RFC 9457 problem details" },
);

/** Standard error responses for an authenticated route. */
export const errorResponses = {
  400: ProblemSchema,
  401: ProblemSchema,
  403: ProblemSchema,
  404: ProblemSchema,
  409: ProblemSchema,
} as const;

export const DateTime = Type.String({ format: "date-time" });
export const NullableDateTime = Type.Union([DateTime, Type.Null()]);

export const IdParams = Type.Object(
  { id: Type.String({ minLength: 1, maxLength: 64 }) },
  { additionalProperties: false },
);
export type IdParams = Static<typeof IdParams>;
