"""Seed 002 (vllm #40432): parameter bytes computed as numel x finfo(dtype).bits // 8,
which raises TypeError for integer and bool parameters (GPTQ / AWQ packed int32 weights)."""
import torch

from . import Catch, Mutant

CATCH = Catch(bug="bytes via torch.finfo(dtype).bits // 8: TypeError on ints (vllm #40432)",
              test="test_bytes.py::test_parameter_bytes_for_every_dtype",
              names=r"parameter_bytes raised TypeError")


class BytesViaFinfo(Mutant):
    def parameter_bytes(self, result):
        return {name: t.numel() * torch.finfo(t.dtype).bits // 8
                for name, t in result.state.items()}


loader = BytesViaFinfo(__name__)
