"""A shard plan's TorchRec hints as real ``ParameterConstraints``, in the trainer.

Owns :func:`torchrec_constraints`: ``dpp shard-plan --out plan.json`` (docs/stats.md) writes
per table the fields of TorchRec's ``ParameterConstraints`` as plain JSON; the trainer, which
has torchrec, turns them into the planner's objects. Here, not in ``dpp_server``, because the
server never imports torch or torchrec. torchrec is optional (the ``torchrec`` extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dpp_client.errors import DppClientError

__all__ = ["torchrec_constraints"]


def torchrec_constraints(plan: Mapping[str, Any]) -> dict[str, Any]:
    """Real ``torchrec`` ``ParameterConstraints`` from a plan's hints, for TorchRec's planner::

        constraints = torchrec_constraints(json.load(open("plan.json")))
        planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)

    Raises:
        DppClientError: torchrec is not installed, or ``plan`` is no dpp shard plan.
    """
    try:
        from torchrec.distributed.planner.types import (  # type: ignore[import-untyped]
            ParameterConstraints,
        )
        from torchrec.distributed.types import CacheParams  # type: ignore[import-untyped]
    except ImportError as exc:
        raise DppClientError(
            "building ParameterConstraints needs torchrec; install it (see pyproject's "
            "torchrec extra) or use the plan's plain 'torchrec.constraints' dicts"
        ) from exc
    hints = plan.get("torchrec", {}).get("constraints") if isinstance(plan, Mapping) else None
    if not isinstance(hints, Mapping):
        raise DppClientError(
            "the plan has no 'torchrec.constraints'; pass the JSON dpp shard-plan --out wrote"
        )
    out = {}
    for name, hint in hints.items():
        fields = dict(hint)
        if "cache_params" in fields:
            fields["cache_params"] = CacheParams(**fields["cache_params"])
        out[name] = ParameterConstraints(**fields)
    return out
