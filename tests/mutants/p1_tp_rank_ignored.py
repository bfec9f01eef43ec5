"""P1: every rank reads rank 0's slice (tp_rank not passed down): all ranks hold the same shard."""
from . import Catch, Mutant

CATCH = Catch(bug="every TP rank loads rank 0's shard",
              test="test_loading.py::test_gathered_ranks_equal_tp1", names="q_proj")


class RankIgnored(Mutant):
    def rank_slice(self, spec, name, options):
        from reference.tp import rank_slice
        return rank_slice(spec, name, options.tp_size, 0)


loader = RankIgnored(__name__)
