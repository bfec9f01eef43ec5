"""The accelerate adapter: big-model loading (`init_empty_weights` +
`load_checkpoint_in_model`) as a candidate loader.

accelerate has no model classes, so the model is transformers' own class built from the
checkpoint's config.json (`AutoModelForCausalLM.from_config`) inside accelerate's
`init_empty_weights()`: every parameter on the meta device, buffers real. The spec's extra
parameters (`model.extras.*`, `model.layers.N.extras.*`: int, bool, FP8, any dtype) are
registered inside the same context, as any custom module's parameters would be. Then
accelerate's `load_checkpoint_in_model(model, checkpoint, device_map={"": device},
dtype=options.dtype, strict=options.strict)` reads the index and the shards and sets
every tensor with `set_module_tensor_to_device`, and re-ties tied parameters.

Translation only:
- `unexpected`: accelerate reports unexpected keys in one warning of
  `accelerate.utils.modeling` (a Python set); the adapter captures that record and
  parses it. With `strict`, accelerate tries to set them and fails (ValueError "...has no
  attribute..." / "...does not have a parameter or a buffer named...") ->
  UnexpectedKeysError;
- `missing` / `loaded`: accelerate reports nothing; `track` is not claimed. What was not
  loaded stays on the meta device; the state leaves it out (it holds no values), so the
  suite reports it absent;
- errors: "Trying to set a tensor of shape" ValueError -> ShapeMismatchError; safetensors,
  JSON and absent-file errors, and accelerate's "does not contain the valid metadata"
  OSError -> CorruptCheckpointError; anything else is reported as a crash;
- `parameter_bytes`: accelerate's `compute_module_sizes(model)` entry of each parameter
  (for phi3's fused modules, the fused parameter's entry split by rows);
- the canonical state as in the transformers adapter.

Only `reference.contract` is imported from loadcheck.
"""

from __future__ import annotations

import ast
import logging
import warnings

import torch
from torch import nn

import accelerate
from accelerate import init_empty_weights, load_checkpoint_in_model
from accelerate.utils import compute_module_sizes

import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from reference.contract import (LoadOptions, LoadResult, ModelSpec, ShapeMismatchError,
                                UnexpectedKeysError, CorruptCheckpointError, torch_dtype)

from ._hf import (FUSED, aliases, canonical_buffers, canonical_state, checkpoint_error,
                  exception_chain, fused_rows, hf_to_canonical)

__all__ = ["AccelerateLoader", "loader", "make_loader"]

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


class _Capture(logging.Handler):
    """Collects accelerate's 'Some weights of the model checkpoint ... were not used' set."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.unexpected: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "were not used when initializing" not in text:
            return
        start, stop = text.find(": {"), text.find("}. ")
        if start >= 0 and stop > start:
            self.unexpected |= set(ast.literal_eval(text[start + 2:stop + 1]))


def _add_extras(model: nn.Module, spec: ModelSpec) -> None:
    """Register the spec's extra parameters (under init_empty_weights: on meta)."""
    for extra in spec.extras:
        owner = model.model if extra.layer is None else model.model.layers[extra.layer]
        if not hasattr(owner, "extras"):
            owner.extras = nn.Module()
        dtype = torch_dtype(extra.dtype)
        owner.extras.register_parameter(extra.name, nn.Parameter(
            torch.empty(extra.shape, dtype=dtype), requires_grad=False))


class AccelerateLoader:
    name = "accelerate"
    version = accelerate.__version__
    # Not claimed, and why (docs/findings/accelerate.md):
    # track: accelerate reports no missing weights (they stay on meta).
    # fused_on_disk: no conversion of layouts; tp: none; poison: never fills allocations.
    # meta_submodule: the resampler is loadcheck's module, not transformers'; accelerate has
    #   nothing to materialise its meta buffer with.
    # offload: accelerate's CPU / disk offload is AlignDevicesHook per module, at forward
    #   time, with no prefetch and no host/device distinction on a CPU-only machine; it
    #   does not fit OffloadPlan honestly.
    capabilities = frozenset({"load", "sharded", "meta_init", "extras", "strict", "forward",
                              "bytes"})
    variants = {"unexpected_keys": "report", "tied_checkpoint_head": "ignore"}

    def load(self, checkpoint: str, spec: ModelSpec, options: LoadOptions) -> LoadResult:
        capture = _Capture()
        log = logging.getLogger("accelerate.utils.modeling")
        log.addHandler(capture)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = AutoConfig.from_pretrained(checkpoint)
                dtype = torch_dtype(options.dtype or spec.dtype)
                with init_empty_weights():
                    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
                    _add_extras(model, spec)
                # accelerate's documented step before loading into an empty model (its own
                # warning asks for it): re-tie what the config ties
                model.tie_weights()
                load_checkpoint_in_model(model, checkpoint, device_map={"": options.device},
                                         dtype=options.dtype, strict=options.strict)
        except Exception as exc:
            raise self._translate(exc) from exc
        finally:
            log.removeHandler(capture)
        model.eval()
        model._loadcheck_spec = spec
        # What accelerate left on meta holds no values: out of the state, so the suite
        # reports it absent (a meta tensor in a LoadResult breaks the contract)
        state = {name: t for name, t in canonical_state(model, spec).items() if not t.is_meta}
        return LoadResult(state=state,
                          buffers=canonical_buffers(model, spec.buffer_names()),
                          unexpected=frozenset(capture.unexpected), aliases=aliases(model),
                          model=model)

    @staticmethod
    def _translate(exc: Exception) -> Exception:
        for link in exception_chain(exc):
            text = str(link)
            if isinstance(link, ValueError) and "Trying to set a tensor of shape" in text:
                return ShapeMismatchError(f"accelerate: {text}")
            if isinstance(link, ValueError) and ("has no attribute" in text or
                                                 "does not have a parameter or a buffer" in text):
                return UnexpectedKeysError(f"accelerate (strict): {text}")
            if isinstance(link, OSError) and "does not contain the valid metadata" in text:
                return CorruptCheckpointError(f"accelerate: {text}")
            mapped = checkpoint_error(link)
            if mapped is not None:
                return mapped
        return exc

    def forward(self, result: LoadResult, input_ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return result.model(input_ids=input_ids).logits

    def parameter_bytes(self, result: LoadResult) -> dict[str, int]:
        """accelerate's own accounting: compute_module_sizes, one entry per tensor name."""
        model = result.model
        spec = model._loadcheck_spec
        sizes = compute_module_sizes(model)
        out: dict[str, int] = {}
        for hf_name, param in model.named_parameters(remove_duplicate=False):
            size = sizes.get(hf_name)
            names = hf_to_canonical(spec, hf_name)
            if len(names) == 1:
                out[names[0]] = size
                continue
            fused = next(f for f in FUSED if f".{f}." in hf_name)
            total = param.shape[0]
            for (_, start, stop), name in zip(fused_rows(spec, fused), names):
                out[name] = None if size is None else size * (stop - start) / total
        if spec.tie_word_embeddings and aliases(model):
            out.pop("lm_head.weight", None)
        return out


loader = AccelerateLoader()


def make_loader() -> AccelerateLoader:
    return AccelerateLoader()
