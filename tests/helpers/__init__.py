"""Helpers the tests share: references, fakes and builders. No tests live here.

A test module imports from here (``from tests.helpers.oracle import fmix64``), never from
another test module, so moving or deleting a test never breaks a second one.

* :mod:`tests.helpers.oracle`: the scalar reference (float32 rounding, MurmurHash3 fmix64 and
  the hashes built on it), written from docs/ops.md, sharing no code with ``dpp_server``;
* :mod:`tests.helpers.op_reference`: per-row references of every op, on the oracle;
* :mod:`tests.helpers.server`: a spec builder and an in-process link to a real ``Master``;
* :mod:`tests.helpers.rpc`: a fake ``grpc.RpcError``.
"""
