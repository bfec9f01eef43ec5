"""P10: a tied model skips every checkpoint key that starts with `lm_head` (the pattern
`if tie_word_embeddings and "lm_head" in name: continue` of model loaders), so a head bias
or a head quantization scale vanishes, reported neither as unexpected nor refused under
strict, where only lm_head.weight is the tied head."""
from . import Catch, Mutant

CATCH = Catch(bug="tied model: every lm_head.* key skipped silently, not only lm_head.weight",
              test="test_tying.py::test_tied_head_is_the_embedding", names=r"lm_head\.")


class SkipsLmHead(Mutant):
    def plan(self, spec, entries, options):
        if spec.tie_word_embeddings:
            skipped = {k for k in entries if k.startswith("lm_head.") and k != "lm_head.weight"}
            entries = {k: e for k, e in entries.items() if k not in skipped}
        else:
            skipped = set()
        plan = super().plan(spec, entries, options)
        plan.ignored |= skipped
        return plan


loader = SkipsLmHead(__name__)
