"""A small DLRM-style click model trained from :class:`~dpp_client.Batch` objects.

Owns: the demo's model and training step. Only an example of consuming batches: one
``EmbeddingBag`` per sparse feature fed straight from a :class:`~dpp_client.JaggedTensor`
(``values`` and ``offsets[:-1]``, no reshaping), a bottom MLP for the dense features, pairwise
dot-product interaction and a top MLP. Must never import ``dpp_server`` or ``storage``.

Deduplicated groups (``Batch.dedup``, RecD): the embedding bags of a group's features pool the
``U`` unique rows only, and the pooled ``[U, E]`` vectors are expanded to ``[B, E]`` through the
group's inverse indices (RecD's model side). The output equals that of the expanded batch
(``batch.expand()``), because pooling a row does not depend on the other rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dpp_client.batch import Batch

__all__ = ["DLRM", "train_step"]


def _mlp(sizes: Sequence[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """Bottom MLP + embedding bags + pairwise dot interaction + top MLP -> one logit.

    Args:
        num_dense: width ``D`` of ``Batch.dense``.
        sparse_names: sparse feature names, in ``Batch.sparse`` order.
        num_embeddings: rows per embedding table; ids must lie in ``[0, num_embeddings)``
            (e.g. the spec's ``sigrid_hash`` ``max_value``).
        embedding_dim: width of every embedding and of the bottom MLP's output.
        bottom: hidden sizes of the bottom MLP.
        top: hidden sizes of the top MLP.
        sparse_grad: sparse embedding gradients; far cheaper per step for large tables, and
            supported by ``torch.optim.SGD`` (fastest here) and ``Adagrad``.
    """

    _pair_rows: torch.Tensor
    _pair_cols: torch.Tensor

    def __init__(
        self,
        num_dense: int,
        sparse_names: Sequence[str],
        num_embeddings: int,
        embedding_dim: int = 16,
        bottom: Sequence[int] = (64,),
        top: Sequence[int] = (64, 32),
        sparse_grad: bool = True,
    ) -> None:
        super().__init__()
        self.sparse_names = list(sparse_names)
        self.bottom = _mlp([num_dense, *bottom, embedding_dim], last_activation=True)
        self.embeddings = nn.ModuleDict(
            {
                name: nn.EmbeddingBag(num_embeddings, embedding_dim, mode="sum", sparse=sparse_grad)
                for name in self.sparse_names
            }
        )
        n_vectors = 1 + len(self.sparse_names)
        rows, cols = torch.triu_indices(n_vectors, n_vectors, offset=1)
        self.register_buffer("_pair_rows", rows, persistent=False)
        self.register_buffer("_pair_cols", cols, persistent=False)
        n_pairs = n_vectors * (n_vectors - 1) // 2
        self.top = _mlp([embedding_dim + n_pairs, *top, 1], last_activation=False)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Returns logits ``[B]``."""
        dense = self.bottom(batch.dense)
        vectors = [dense]
        grouped = {name: ikjt for ikjt in batch.dedup.values() for name in ikjt.unique}
        for name in self.sparse_names:
            ikjt = grouped.get(name)
            if ikjt is None:
                jt = batch.sparse[name]
                vectors.append(self.embeddings[name](jt.values, jt.offsets[:-1]))
            else:  # pool the unique rows, then expand: [U, E] -> [B, E]
                jt = ikjt[name]
                pooled = self.embeddings[name](jt.values, jt.offsets[:-1])
                vectors.append(pooled.index_select(0, ikjt.inverse_indices))
        stacked = torch.stack(vectors, dim=1)  # [B, F, E]
        dots = torch.bmm(stacked, stacked.transpose(1, 2))  # [B, F, F]
        pairs = dots[:, self._pair_rows, self._pair_cols]
        logits: torch.Tensor = self.top(torch.cat([dense, pairs], dim=1))
        return logits.squeeze(1)


def train_step(model: DLRM, opt: torch.optim.Optimizer, batch: Batch) -> float:
    """One optimisation step on ``batch`` with binary cross-entropy on its labels.

    Returns:
        The step's mean loss.

    Raises:
        ValueError: the batch has no labels (the spec names no ``label``).
    """
    if batch.labels is None:
        raise ValueError("train_step needs labels: set `label` in the session spec")
    logits = model(batch)
    loss = nn.functional.binary_cross_entropy_with_logits(
        logits, batch.labels, weight=batch.weights
    )
    opt.zero_grad(set_to_none=True)
    torch.autograd.backward(loss)
    opt.step()
    return float(loss.detach())
