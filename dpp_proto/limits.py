"""The service's input limits, defined once: every entry point checks against these.

Stdlib only, so the master, the workers, ``storage`` and the trainer's client all import the
same numbers (a client error can name the limit it hit). A request over a limit is refused
where it enters, naming the field and the limit: ``INVALID_ARGUMENT`` for a value no request
may have (a 60 MB session name), ``RESOURCE_EXHAUSTED`` for a capacity (gRPC's own answer to an
oversized message, a table with more files than one session may plan). Why fixed numbers
rather than settings: they protect the master's memory and lock from any one caller, and a
client must be able to know them without asking. docs/operations.md lists them.
"""

from __future__ import annotations

#: Largest control-plane message (any request to or answer from the master), on every
#: server and channel. The largest legitimate one is a session spec, or ListWorkers.
MAX_MESSAGE_BYTES = 16 << 20
#: Largest serialized session spec (CreateSessionRequest.spec); workers fetch it too.
MAX_SPEC_BYTES = 1 << 20
#: Output features per session.
MAX_FEATURES = 4_096
#: Characters of a session name, a feature name, an id (session, worker, split).
MAX_NAME_CHARS = 256
#: Characters of a worker's address (host:port).
MAX_ADDRESS_CHARS = 256
#: Ranks of one session (``world_size``).
MAX_WORLD_SIZE = 16_384
#: Pipeline threads a worker may announce.
MAX_PIPELINE_THREADS = 1_024
#: Folder levels below a table's root that a listing descends; symlinked folders are never
#: followed, so a link loop cannot make a listing endless.
MAX_LISTING_DEPTH = 32
#: Files one table may hold (after listing, before reading any footer).
MAX_TABLE_FILES = 1_000_000
#: Split acknowledgements (or re-production requests) in one AckBatches request.
MAX_ACKS_PER_REQUEST = 100_000


def over_limit(field: str, value: int, limit: int, unit: str, fix: str = "") -> str:
    """The message of a refused input: which field (none: the caller names it), its value, the
    limit and what to do."""
    text = f"{value:,} {unit} is over the limit of {limit:,} (dpp_proto/limits.py)"
    text = f"{field}: {text}" if field else text
    return f"{text}; {fix}" if fix else text
