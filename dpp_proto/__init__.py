"""dpp's protocol: generated protobuf and gRPC code (do not edit: run scripts/gen_proto.sh),
and the hand-written frame contract both sides import (:mod:`dpp_proto.wire`)."""
