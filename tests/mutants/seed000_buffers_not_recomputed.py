"""Seed 000's partial fix (vllm #36751, transformers #48892): meta tensors are given
storage with to_empty, but non-persistent buffers are not recomputed: they hold garbage."""
from reference.dtypes import poison_

from . import Catch, Mutant

CATCH = Catch(bug="to_empty without recomputing non-persistent buffers (vllm #36751)",
              test="test_meta.py::test_meta_submodule_materialised_after_load",
              names=r"model\.(resampler\.position_scale|rotary_emb\.inv_freq)")


class BuffersNotRecomputed(Mutant):
    def materialize(self, model, options):
        fresh = []
        for module in model.modules():
            own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            if any(t.is_meta for t in own):
                module.to_empty(device="cpu", recurse=False)
                fresh.extend(module.buffers(recurse=False))
        if options.poison:
            for tensor in [*model.parameters(), *fresh]:
                poison_(tensor.data)
        # the bug: no model.reset_buffers()


loader = BuffersNotRecomputed(__name__)
