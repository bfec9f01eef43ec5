"""P5 (sglang #30761 / #40587: post-processing assumed a first run; vllm #55198: an
alternative loader skipped post-processing): on reload of a serialized FP8 model the
max-scale requantization is skipped because the model "is already processed", so the
reloaded per-slot codes and scales go in raw."""
from . import Catch, Mutant

CATCH = Catch(bug="reload skips FP8 post-processing (sglang #30761, vllm #55198)",
              test="test_reload.py::test_reload_equals_fresh_load",
              names=r"slot \d \(\w+_proj\) of [\w.]+\): (scale differs|\d+ FP8 codes differ)")


class ReloadSkipsPostProcessing(Mutant):
    reloading = False

    def reload(self, result, checkpoint, spec, options):
        self.reloading = True
        try:
            return super().reload(result, checkpoint, spec, options)
        finally:
            self.reloading = False

    def requantize_serialized(self, views, spec, loaded):
        if not self.reloading:
            super().requantize_serialized(views, spec, loaded)


loader = ReloadSkipsPostProcessing(__name__)
