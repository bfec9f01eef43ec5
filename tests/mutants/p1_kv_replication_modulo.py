"""P1: with tp_size > kv heads, rank r reads kv head r % KV instead of r // (tp / KV)."""
from reference.tp import RankSlice

from . import Catch, Mutant

CATCH = Catch(bug="kv-head replication picks head r % KV",
              test="test_loading.py::test_gathered_ranks_equal_tp1", names=r"\.(k|v)_proj\.")


class KvModulo(Mutant):
    def rank_slice(self, spec, name, options):
        piece = super().rank_slice(spec, name, options)
        kv, tp = spec.num_kv_heads, options.tp_size
        if piece is not None and name.rsplit(".", 2)[-2] in ("k_proj", "v_proj") and tp > kv:
            head = options.tp_rank % kv
            return RankSlice(0, head * spec.head_dim, (head + 1) * spec.head_dim)
        return piece


loader = KvModulo(__name__)
