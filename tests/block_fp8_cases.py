"""What the block-FP8 adapter tests share: a tiny llama whose q/k/v and gate/up shards are
whole 4x8 blocks, and one load of a generated checkpoint by the reference (under the
candidate's variants) and by the candidate."""

from __future__ import annotations

from pathlib import Path

from conformance.compare import Outcome, run_outcome
from generators.checkpoints import CheckpointPlan
from reference.contract import LoadOptions, ModelSpec, QuantSpec
from reference.loading import ReferenceLoader

BLOCK_LLAMA = ModelSpec(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                        num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                        dtype="bfloat16", quant=QuantSpec("fp8_block", (4, 8)))


def load_both(tmp_path: Path, candidate, spec: ModelSpec, options: LoadOptions = LoadOptions(),
              **plan) -> tuple[Outcome, Outcome]:
    directory = str(CheckpointPlan(spec, data_seed=5, **plan).write(tmp_path / "checkpoint"))
    reference = ReferenceLoader(variants=candidate.variants)
    return (run_outcome(lambda: reference.load(directory, spec, options)),
            run_outcome(lambda: candidate.load(directory, spec, options)))
