/**
 * @moat/proto: the typed control-plane <-> agent contract, generated from proto/moat/v1 by buf
 * (src/gen, never edited by hand), plus the gRPC method table both ends share. Owns no I/O.
 */
import { fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import {
  ConnectRequestSchema,
  ConnectResponseSchema,
  EnrolRequestSchema,
  EnrolResponseSchema,
} from "./gen/moat/v1/agent_pb.js";

export * from "./gen/moat/v1/agent_pb.js";
export { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
export { create, toBinary, fromBinary } from "@bufbuild/protobuf";

/** Largest message either end accepts or sends on the agent stream, unless configured otherwise. */
export const DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024;

interface MethodCodec<S extends DescMessage> {
  serialize: (value: MessageShape<S>) => Buffer;
  deserialize: (bytes: Buffer) => MessageShape<S>;
}

function codec<S extends DescMessage>(schema: S): MethodCodec<S> {
  return {
    serialize: (value) => Buffer.from(toBinary(schema, value)),
    deserialize: (bytes) => fromBinary(schema, bytes),
  };
}

const enrolRequest = codec(EnrolRequestSchema);
const enrolResponse = codec(EnrolResponseSchema);
const connectRequest = codec(ConnectRequestSchema);
const connectResponse = codec(ConnectResponseSchema);

/**
 * The AgentService method table in the shape @grpc/grpc-js expects for
 * `server.addService` and `makeGenericClientConstructor`.
 */
export const agentServiceDefinition = {
  enrol: {
    path: "/moat.v1.AgentService/Enrol",
    requestStream: false,
    responseStream: false,
    requestSerialize: enrolRequest.serialize,
    requestDeserialize: enrolRequest.deserialize,
    responseSerialize: enrolResponse.serialize,
    responseDeserialize: enrolResponse.deserialize,
  },
  connect: {
    path: "/moat.v1.AgentService/Connect",
    requestStream: true,
    responseStream: true,
    requestSerialize: connectRequest.serialize,
    requestDeserialize: connectRequest.deserialize,
    responseSerialize: connectResponse.serialize,
    responseDeserialize: connectResponse.deserialize,
  },
} as const;
