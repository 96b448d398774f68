"""Feature transforms: the op registry, the ops, and the per-session feature pipeline.

Owns pure functions only: Arrow/polars in, Arrow out. Must never do I/O (``map_id`` reading its
vocabulary once per session is the one exception) or import grpc, storage or torch.

Each op family lives in its own module and registers its ops on import; importing this
package imports every family, so :func:`get_op` sees them all. A new family is one new
module plus one import line below.

:class:`FeaturePipeline` is loaded on first use (:func:`__getattr__`), not here:
``dpp_server.spec`` imports this package's registry, and the pipeline imports
``dpp_server.spec``, so importing it eagerly here would make the cycle spec -> transforms ->
pipeline -> spec. The dependencies run one way: registry and families <- spec <- pipeline.
"""

from typing import TYPE_CHECKING, Any

from dpp_server.transforms import (  # noqa: F401  (register their ops)
    dense,
    derived,
    overlap,
    scores,
    sparse,
    strings,
)
from dpp_server.transforms.registry import OpDef, Param, get_op, registered_ops

if TYPE_CHECKING:
    from dpp_server.transforms.pipeline import FeaturePipeline

__all__ = ["FeaturePipeline", "OpDef", "Param", "get_op", "registered_ops"]


def __getattr__(name: str) -> Any:
    if name == "FeaturePipeline":
        from dpp_server.transforms.pipeline import FeaturePipeline

        return FeaturePipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
