"""Generated protobuf and gRPC code for dpp. Do not edit: run scripts/gen_proto.sh."""
