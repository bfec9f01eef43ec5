"""The transformers adapter: `AutoModelForCausalLM.from_pretrained` as a candidate loader.

What runs is transformers' own code path, unchanged: config resolution from the
checkpoint's config.json, `dtype="auto"` (or the requested dtype), the model built on the
meta device, the safetensors shards resolved through model.safetensors.index.json, the
weights converted and set by `convert_and_load_state_dict_in_model`, missing weights
initialised, the head tied, and the loading report (`output_loading_info=True`).

Translation only:
- the loading report -> `missing` (HF parameter names to canonical names: phi3's fused
  `qkv_proj` / `gate_up_proj` stand for their logical matrices) and `unexpected` (the keys
  transformers reports, as it reports them);
- `track` / `strict`: transformers has no option that raises on missing or unexpected
  keys; its users read the loading report. The adapter raises MissingWeightsError (track
  or strict) / UnexpectedKeysError (strict) when the *report* lists something, so the
  properties check the report transformers produces;
- exceptions -> the error family: transformers' mismatched-size RuntimeError ->
  ShapeMismatchError; safetensors / JSON / absent-file errors -> CorruptCheckpointError.
  Everything else propagates and the suite reports it as a crash of transformers;
- the state -> canonical form (phi3's fused modules as row views). A parameter the
  library holds that is not a canonical parameter of the spec (a head transformers
  untied) is returned under its HF name so the suite sees it.

Only `reference.contract` is imported from loadcheck.
"""

from __future__ import annotations

import logging
import warnings

import torch

import transformers
from transformers import AutoModelForCausalLM

from reference.contract import (LoadOptions, LoadResult, MissingWeightsError, ModelSpec,
                                ShapeMismatchError, UnexpectedKeysError)

from ._hf import (aliases, canonical_buffers, canonical_state, checkpoint_error,
                  checkpoint_has_key, exception_chain, hf_to_canonical)

__all__ = ["TransformersLoader", "loader", "make_loader"]

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def _mismatch(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("ignore_mismatched_sizes" in text
                                              or "size mismatch" in text)


class TransformersLoader:
    name = "transformers"
    version = transformers.__version__
    # Not claimed, and why (docs/findings/transformers.md has the evidence):
    # fused_on_disk: a llama / qwen2 checkpoint with fused qkv / gate_up (or a phi3 one split)
    #   is not converted: its keys are reported unexpected and the weights missing.
    # tp: transformers' tensor parallelism needs torch.distributed and a device mesh; there
    #   is no simulated rank.
    # poison: transformers initialises missing weights (`_init_weights`); it never fills
    #   allocations with a pattern.
    # extras / meta_submodule: LlamaForCausalLM & co. have no such parameters.
    # offload: the suite's OffloadPlan is vLLM's prefetch offloader; transformers' device_map
    #   offload is accelerate's hooks (see the accelerate adapter).
    # bytes: needs `extras` for its property; transformers' accounting is
    #   `get_memory_footprint()` (a total), nothing per parameter.
    # fp8_serialized: see docs/findings/transformers.md (FP8 section).
    capabilities = frozenset({"load", "sharded", "meta_init", "track", "strict", "forward"})
    # Unexpected keys are reported, never raised (without strict). A checkpoint head in a
    # tied model that differs from the embedding unties the model (tie_weights: "both are
    # present in the checkpoints with different values, so we will NOT tie them"); an
    # equal one is dropped; tying is symmetric, so a missing embedding is filled from it.
    variants = {"unexpected_keys": "report", "tied_checkpoint_head": "untie",
                "tied_embedding_source": "either"}

    def load(self, checkpoint: str, spec: ModelSpec, options: LoadOptions) -> LoadResult:
        kwargs = {"dtype": options.dtype or "auto", "output_loading_info": True}
        if options.device != "cpu":
            kwargs["device_map"] = {"": options.device}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, info = AutoModelForCausalLM.from_pretrained(checkpoint, **kwargs)
        except Exception as exc:  # translate what is about the checkpoint; re-raise the rest
            for link in exception_chain(exc):
                if _mismatch(link):
                    raise ShapeMismatchError(f"transformers: {link}") from exc
                mapped = checkpoint_error(link)
                if mapped is not None:
                    raise mapped from exc
            raise
        wanted = spec.parameter_shapes()
        missing = set()
        for key in info["missing_keys"]:
            names = [n for n in hf_to_canonical(spec, key) if n in wanted]
            # A tied head is the embedding: transformers lists `lm_head.weight` as missing
            # whenever the checkpoint has no head, which is no canonical parameter.
            missing.update(names)
        unexpected = set(info["unexpected_keys"])
        if options.strict and unexpected:
            names = sorted(unexpected)
            raise UnexpectedKeysError(f"transformers reports unexpected keys: {names}",
                                      subject=names[0])
        if (options.track or options.strict) and missing:  # strict: torch's, both ways
            names = sorted(missing)
            raise MissingWeightsError(f"transformers reports missing keys: {names}",
                                      subject=names[0])
        state, tied_alias = canonical_state(model, spec), aliases(model)
        loaded = {n for n in wanted if n not in missing}
        ignored = set()
        if spec.tie_word_embeddings and checkpoint_has_key(checkpoint, "lm_head.weight") \
                and checkpoint_has_key(checkpoint, "model.embed_tokens.weight"):
            # the checkpoint head was dropped (model still tied) or loaded (model untied);
            # without an embedding in the checkpoint it *was* the embedding's source
            (ignored if tied_alias else loaded).add("lm_head.weight")
        return LoadResult(state=state, buffers=canonical_buffers(model, spec.buffer_names()),
                          loaded=frozenset(loaded), missing=frozenset(missing),
                          unexpected=frozenset(unexpected), ignored=frozenset(ignored),
                          aliases=tied_alias, model=model)

    def forward(self, result: LoadResult, input_ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return result.model(input_ids=input_ids).logits


loader = TransformersLoader()


def make_loader() -> TransformersLoader:
    return TransformersLoader()


logging.getLogger("transformers").setLevel(logging.ERROR)
