"""P10 (transformers #48154): in a tied model, a checkpoint lm_head.weight is loaded into
the shared storage and overwrites the embedding, with no report."""
from reference.loading import Copy
from reference.names import Slot

from . import Catch, Mutant

CATCH = Catch(bug="tied model: checkpoint head overwrites the embedding (transformers #48154)",
              test="test_tying.py::test_tied_head_is_the_embedding",
              names="model.embed_tokens.weight")


class HeadOverwrites(Mutant):
    def plan(self, spec, entries, options):
        plan = super().plan(spec, entries, options)
        if "lm_head.weight" in plan.ignored:
            plan.ignored.discard("lm_head.weight")
            plan.copies.append(Copy(entries["lm_head.weight"],
                                    Slot("model.embed_tokens.weight", 0, spec.vocab_size)))
        return plan


loader = HeadOverwrites(__name__)
