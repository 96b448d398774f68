"""dpp's protocol: generated protobuf and gRPC code (``*_pb2*``: do not edit, run
scripts/gen_proto.sh), and the few hand-written modules both sides share: the frame contract
(:mod:`dpp_proto.wire`, pyarrow only) and the spec defaults
(:mod:`dpp_proto.defaults`, stdlib only)."""
