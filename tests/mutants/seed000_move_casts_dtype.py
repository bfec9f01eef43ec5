"""Seed 000 (vllm #39862, the part #36751 missed): the device move after loading also
sets the default dtype, so a bf16 / fp16 (or FP8) resampler comes back float32."""
import torch

from . import Catch, Mutant

CATCH = Catch(bug="post-load device move also casts dtype (vllm #39862)",
              test="test_meta.py::test_meta_submodule_materialised_after_load",
              names="model.resampler.")


class MoveCastsDtype(Mutant):
    def finish(self, model, options):
        if model.spec.meta_submodule:
            model.model.resampler.to(device=options.device, dtype=torch.get_default_dtype())
        super().finish(model, options)


loader = MoveCastsDtype(__name__)
