"""P10, `tied_checkpoint_head: untie`: any checkpoint lm_head.weight unties the model, without
comparing it with the embedding. A checkpoint written by save_pretrained holds the tied
head with the embedding's values, and the model then loses its tie (two storages, and a
later update of one leaves the other stale); only such a checkpoint shows it."""
from . import Catch, Mutant

CATCH = Catch(bug="'untie' without comparing: a head equal to the embedding unties the model",
              test="test_tying.py::test_tied_head_is_the_embedding", names=r"storage sharing")


class UntiesAlways(Mutant):
    def __init__(self, name):
        super().__init__(name)
        self.variants.update(tied_checkpoint_head="untie")

    def untie_if_different(self, ckpt, plan, model, spec, options):
        embedding = model.canonical_views()["model.embed_tokens.weight"]
        model.untie(ckpt.read(plan.tied_head).to(embedding.dtype))
        plan.loaded.add("lm_head.weight")


loader = UntiesAlways(__name__)
