"""Seed 004 (vllm #41086, as reviewed): the tracking exemption tests
`getattr(quant_method, "process_weights_after_loading")`, which every quant method has,
so every linear layer's parameters count as loaded: a missing bias goes unreported."""
from . import Catch, Mutant

CATCH = Catch(bug="tracking exemption covers every linear layer (vllm #41086)",
              test="test_tracking.py::test_missing_weights_reported_exactly",
              names=r"_proj\.(bias|weight)")


class ExemptsLinears(Mutant):
    def exempt_from_tracking(self, spec, name):
        return name.rsplit(".", 2)[-2].endswith("_proj")  # every module with a quant method


loader = ExemptsLinears(__name__)
