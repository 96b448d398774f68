"""Generated protobuf and gRPC code for dpp (``*_pb2*``: do not edit, run scripts/gen_proto.sh),
and the few hand-written, standard-library-only modules both sides share (``defaults.py``)."""
