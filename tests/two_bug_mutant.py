"""A loader with two unrelated bugs, for proving that one bug does not mask the other:
a k_proj bias is never written (it keeps the poison pattern), and integer extras are read
one too high. Not in tests.mutants.MUTANTS (each of those carries exactly one bug)."""

import torch

from tests.mutants import Mutant


class TwoBugs(Mutant):
    def copy_slot(self, ckpt, copy, dest, spec, options):
        if copy.slot.canonical.endswith(".k_proj.bias"):
            return  # bug 1: never written
        super().copy_slot(ckpt, copy, dest, spec, options)
        if ".extras." in f".{copy.slot.canonical}" and not dest.dtype.is_floating_point \
                and dest.dtype != torch.bool:
            dest.add_(1)  # bug 2: integer extras off by one


loader = TwoBugs(__name__)
