"""`vocab_shards` (issue 17): vLLM's and SGLang's padded vocabulary split in the
reference. Under "padded64" each rank holds the real rows of its part of the vocabulary
padded to 64; the gathered ranks are still the tp=1 model."""

from __future__ import annotations

import pytest
import torch

from generators.checkpoints import CheckpointPlan
from reference.contract import LoadOptions, ModelSpec
from reference.loading import ReferenceLoader
from reference.tp import gather_ranks, rank_slice


@pytest.mark.parametrize("vocab, tp, rows", [(32, 2, [32, 0]), (96, 2, [64, 32]),
                                             (128, 4, [32, 32, 32, 32]), (8, 4, [8, 0, 0, 0])])
def test_padded_ranks_hold_the_real_rows_of_their_part(vocab, tp, rows):
    spec = ModelSpec(vocab_size=vocab)
    pieces = [rank_slice(spec, "lm_head.weight", tp, r, "padded64") for r in range(tp)]
    assert [p.stop - p.start for p in pieces] == rows
    assert [rank_slice(spec, "lm_head.weight", tp, r).stop for r in range(tp)] == \
        [vocab // tp * (r + 1) for r in range(tp)]  # the default is unchanged


def test_padded_ranks_gather_to_the_tp1_model(tmp_path):
    spec = ModelSpec(family="llama", num_heads=4, num_kv_heads=2, head_dim=4,
                     tie_word_embeddings=True)
    directory = CheckpointPlan(spec, data_seed=1).write(tmp_path / "ckpt")
    loader = ReferenceLoader(variants={"vocab_shards": "padded64"})
    states = [loader.load(str(directory), spec, LoadOptions(tp_size=2, tp_rank=r, poison=True)
                          ).state for r in range(2)]
    assert [s["model.embed_tokens.weight"].shape[0] for s in states] == [32, 0]
    full = ReferenceLoader().load(str(directory), spec, LoadOptions()).state
    gathered = gather_ranks(spec, states)
    assert all(torch.equal(gathered[n], full[n]) for n in full)
