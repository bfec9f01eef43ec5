"""Seed 000 (vllm #39862): the meta-built resampler is moved to the device *before* its
weights are loaded; torch raises NotImplementedError on a meta tensor's copy."""
from . import Catch, Mutant

CATCH = Catch(bug="device move of a meta submodule before loading (vllm #39862)",
              test="test_meta.py::test_meta_submodule_materialised_after_load",
              names="NotImplementedError")


class MoveBeforeLoad(Mutant):
    def materialize(self, model, options):
        if model.spec.meta_submodule:
            model.model.resampler.to(options.device)  # the bug: still on meta here
        super().materialize(model, options)


loader = MoveBeforeLoad(__name__)
