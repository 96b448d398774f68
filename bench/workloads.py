"""The benchmark datasets and the one preprocessing job each pipeline runs over them.

Two tables, generated once with a fixed seed by :func:`storage.generate_table` (``dpp gen``):

* ``dlrm``: the DLRM-shaped table (13 dense + 26 id-list features, label); the job reads all of
  its features: fill_null/clamp/log1p on dense, first_x(20)/sigrid_hash on id lists.
* ``wide``: about 500 feature columns (400 dense + 100 id lists); the job reads 10% of them
  (40 dense + 10 id lists), as Meta reports of its jobs, so projection matters.

Both jobs keep rows passing ``dense_12 IS NOT NULL OR label = 1`` and cut batches of 4096.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dpp_client import Feature, Op, SessionSpec
from storage import GenConfig, generate_table

ROW_FILTER = "dense_12 IS NOT NULL OR label = 1"
BATCH_SIZE = 4096
TARGET_SPLIT_ROWS = 65_536


@dataclasses.dataclass(frozen=True)
class Workload:
    """A table and the job over it.

    Attributes:
        name: ``dlrm`` or ``wide``.
        config: how the table is generated.
        read_dense: dense features the job reads (``dense_0..``).
        read_sparse: id-list features the job reads (``sparse_0..``).
    """

    name: str
    config: GenConfig
    read_dense: int
    read_sparse: int

    @property
    def columns_total(self) -> int:
        return self.config.dense + self.config.sparse

    def table_uri(self, directory: Path) -> str:
        c = self.config
        return str(directory / f"{self.name}-{c.rows}-{c.dense}d{c.sparse}s-seed{c.seed}")

    def ensure_table(self, directory: Path) -> str:
        """Generates the table under ``directory`` unless it is there already."""
        uri = Path(self.table_uri(directory))
        if not (uri / "_SUCCESS").exists():
            if uri.exists():
                import shutil

                shutil.rmtree(uri)  # a half-written table from an interrupted run
            print(f"generating {self.name}: {self.config.rows} rows at {uri} ...", flush=True)
            generate_table(str(uri), self.config)
            (uri / "_SUCCESS").write_text("")
        return str(uri)

    def spec(self, table_uri: str) -> SessionSpec:
        """The job: same ops on every pipeline, batch 4096, one epoch."""
        features = [
            Feature(
                f"d{i}",
                "dense",
                source=f"dense_{i}",
                ops=(Op("fill_null", {"value": 0.0}), Op("clamp", {"min": 0.0}), Op("log1p")),
            )
            for i in range(self.read_dense)
        ] + [
            Feature(
                f"s{i}",
                "sparse",
                source=f"sparse_{i}",
                ops=(
                    Op("first_x", {"x": 20}),
                    Op("sigrid_hash", {"salt": i, "max_value": 100_000}),
                ),
            )
            for i in range(self.read_sparse)
        ]
        return SessionSpec(
            table_uri=table_uri,
            features=tuple(features),
            label="label",
            row_filter=ROW_FILTER,
            batch_size=BATCH_SIZE,
            epochs=1,
            # Two row groups per split: enough splits to balance 2-4 pipeline threads on
            # these tables (the default, 262k rows, leaves 3-9 splits: threads idle at the end).
            target_split_rows=TARGET_SPLIT_ROWS,
        )


def workloads(quick: bool) -> dict[str, Workload]:
    """The two workloads; ``quick`` shrinks the tables (same shapes, fewer rows)."""
    return {
        "dlrm": Workload(
            "dlrm",
            GenConfig(rows=300_000 if quick else 1_000_000, seed=0),
            read_dense=13,
            read_sparse=26,
        ),
        "wide": Workload(
            "wide",
            GenConfig(
                rows=60_000 if quick else 200_000,
                dense=400,
                sparse=100,
                max_list_len=12,
                rows_per_file=50_000,
                row_group_rows=10_000,
                seed=0,
            ),
            read_dense=40,
            read_sparse=10,
        ),
    }
