"""Dtype rules: float32 -> bfloat16 by dropping the low 16 bits instead of rounding to
nearest even."""
import torch

from . import Catch, Mutant

CATCH = Catch(bug="float32 -> bfloat16 by truncation, not round-to-nearest-even",
              test="test_loading.py::test_float_casts_round_once", names=r"\.(weight|bias)\b")


class Truncates(Mutant):
    def copy_slot(self, ckpt, copy, dest, spec, options):
        if copy.entry.dtype == torch.float32 and dest.dtype == torch.bfloat16:
            source = torch.empty(dest.shape, dtype=torch.float32)
            super().copy_slot(ckpt, copy, source, spec, options)
            dest.copy_((source.view(torch.int32) & -65536).view(torch.float32))
            return
        super().copy_slot(ckpt, copy, dest, spec, options)


loader = Truncates(__name__)
