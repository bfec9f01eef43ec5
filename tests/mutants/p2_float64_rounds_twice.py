"""Dtype rules: float64 -> bfloat16 / float16 through float32, rounding twice (what
`Tensor.to` and `copy_` do in torch 2.13: 1 + 2^-8 + 2^-30 lands on the tie 1 + 2^-8 in
float32, then rounds to even, 1.0, where one rounding gives 1.0078125)."""
import torch

from . import Catch, Mutant

CATCH = Catch(bug="float64 -> bf16 / fp16 cast through float32 (double rounding)",
              test="test_loading.py::test_float_casts_round_once", names=r"\.(weight|bias)\b")


class RoundsTwice(Mutant):
    def copy_slot(self, ckpt, copy, dest, spec, options):
        if copy.entry.dtype == torch.float64 and dest.dtype in (torch.bfloat16, torch.float16):
            source = torch.empty(dest.shape, dtype=torch.float32)
            super().copy_slot(ckpt, copy, source, spec, options)
            dest.copy_(source)
            return
        super().copy_slot(ckpt, copy, dest, spec, options)


loader = RoundsTwice(__name__)
