"""dpp client: the trainer-side library that turns dpp worker streams into torch batches.

Owns the public API below. Knows the proto contract (``dpp_proto``), Arrow and torch; must
never import ``dpp_server`` or ``storage``: a trainer installs the client alone.

Typical use::

    from dpp_client import DppLoader

    with DppLoader("10.0.0.1:50051", "spec.yaml", session_name="ctr-run-7") as loader:
        for epoch in range(2):
            for batch in loader:          # each iter() is the next epoch
                train_step(batch.to("cuda", non_blocking=True))
"""

from dpp_client.batch import (
    Batch,
    InverseKeyedJaggedTensor,
    JaggedTensor,
    batch_from_arrow,
    concat_batches,
)
from dpp_client.errors import (
    CorruptFileError,
    DppAccessError,
    DppClientError,
    DppUnavailableError,
    FrameError,
    LimitExceededError,
    SessionConflictError,
    SessionNotFoundError,
    SpecRejectedError,
    TableChangedError,
    TableError,
    TableLayoutError,
    TableNotFoundError,
    WorkerDataError,
)
from dpp_client.loader import DppLoader
from dpp_client.master_link import GrpcMasterLink, MasterLink
from dpp_client.metrics import LoaderStats
from dpp_client.spec import Feature, Op, SessionSpec

__all__ = [
    "Batch",
    "CorruptFileError",
    "DppAccessError",
    "DppClientError",
    "DppLoader",
    "DppUnavailableError",
    "Feature",
    "FrameError",
    "GrpcMasterLink",
    "InverseKeyedJaggedTensor",
    "JaggedTensor",
    "LimitExceededError",
    "LoaderStats",
    "MasterLink",
    "Op",
    "SessionConflictError",
    "SessionNotFoundError",
    "SessionSpec",
    "SpecRejectedError",
    "TableChangedError",
    "TableError",
    "TableLayoutError",
    "TableNotFoundError",
    "WorkerDataError",
    "batch_from_arrow",
    "concat_batches",
]
