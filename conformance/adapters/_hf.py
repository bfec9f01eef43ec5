"""Helpers shared by the transformers and accelerate adapters.

Both adapters hold a Hugging Face model (`LlamaForCausalLM`, `Qwen2ForCausalLM`,
`Phi3ForCausalLM`): HF names equal the canonical names, except that phi3 keeps q/k/v and
gate/up fused in memory (`qkv_proj`, `gate_up_proj`), which the canonical state returns as
row views. Only `reference.contract` is imported from loadcheck.
"""

from __future__ import annotations

import json
import pickle
from typing import Iterable

import torch

from reference.contract import (CorruptCheckpointError, LoadError, ModelSpec,
                                UnsafeCheckpointError)

__all__ = ["FUSED", "fused_rows", "canonical_state", "hf_to_canonical", "canonical_buffers",
           "aliases", "checkpoint_error", "exception_chain"]

# fused HF module -> the logical modules stacked in its rows, in order (HF phi3's layout)
FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}


def fused_rows(spec: ModelSpec, fused: str) -> list[tuple[str, int, int]]:
    """(logical module, first row, end row) of each slot of a fused module."""
    sizes = {"self_attn.q_proj": spec.q_size, "self_attn.k_proj": spec.kv_size,
             "self_attn.v_proj": spec.kv_size, "mlp.gate_proj": spec.intermediate_size,
             "mlp.up_proj": spec.intermediate_size}
    rows, start = [], 0
    for part in FUSED[fused]:
        rows.append((part, start, start + sizes[part]))
        start += sizes[part]
    return rows


def _hf_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of the model under each of its names (tied ones twice)."""
    return {n: p for n, p in model.named_parameters(remove_duplicate=False)}


def hf_to_canonical(spec: ModelSpec, hf_name: str) -> list[str]:
    """The canonical names one HF parameter name holds (several for a fused phi3 module)."""
    for fused, parts in FUSED.items():
        marker = f".{fused}."
        if marker in hf_name:
            prefix, suffix = hf_name.split(marker)
            return [f"{prefix}.{part}.{suffix}" for part in parts]
    return [hf_name]


def canonical_state(model: torch.nn.Module, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Canonical name -> tensor (phi3's fused modules as row views). HF parameters that are
    not canonical parameters of `spec` (a head that the library untied, say) are kept
    under their HF name, so that the suite sees them."""
    params = _hf_tensors(model)
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    wanted = spec.parameter_shapes()
    for hf_name, tensor in params.items():
        names = hf_to_canonical(spec, hf_name)
        if len(names) > 1:
            fused = next(f for f in FUSED if f".{f}." in hf_name)
            for (part, start, stop), name in zip(fused_rows(spec, fused), names):
                state[name] = tensor.detach()[start:stop]
            used.add(hf_name)
        elif hf_name in wanted:
            state[hf_name] = tensor.detach()
            used.add(hf_name)
    tied = spec.tie_word_embeddings
    for hf_name, tensor in params.items():
        if hf_name in used:
            continue
        if tied and hf_name == "lm_head.weight" and \
                tensor is params.get("model.embed_tokens.weight"):
            continue  # the tied head *is* the embedding: reported as an alias
        state[hf_name] = tensor.detach()
    return state


def aliases(model: torch.nn.Module) -> dict[str, str]:
    params = _hf_tensors(model)
    head, embed = params.get("lm_head.weight"), params.get("model.embed_tokens.weight")
    if head is not None and embed is not None and (
            head is embed or (head.device.type != "meta" and head.data_ptr() == embed.data_ptr())):
        return {"lm_head.weight": "model.embed_tokens.weight"}
    return {}


def canonical_buffers(model: torch.nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The non-persistent buffers the spec defines (rotary inv_freq), as the model holds them."""
    buffers = dict(model.named_buffers())
    return {n: buffers[n].detach() for n in names if n in buffers}


def checkpoint_error(exc: BaseException) -> LoadError | None:
    """A library / safetensors / filesystem exception about the checkpoint files -> the
    error family, or None when it is not about the files (then it is reported as is)."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover
        SafetensorError = ()  # type: ignore[assignment]
    if SafetensorError and isinstance(exc, SafetensorError):
        return CorruptCheckpointError(f"safetensors refused the file: {exc}")
    if isinstance(exc, json.JSONDecodeError):
        return CorruptCheckpointError(f"unreadable JSON (config or index): {exc}")
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return CorruptCheckpointError(f"a checkpoint file is absent: {exc}",
                                      subject=getattr(exc, "filename", None))
    if isinstance(exc, pickle.UnpicklingError):  # torch.load(weights_only=True) refused it
        return UnsafeCheckpointError(f"refused to unpickle: {exc}")
    if isinstance(exc, PermissionError):
        return UnsafeCheckpointError(f"a checkpoint file cannot be opened: {exc}")
    return None


def exception_chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        out.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return out


def checkpoint_has_key(checkpoint: str, key: str) -> bool:
    """Whether the (already loaded, so valid) checkpoint directory holds `key`: the index's
    weight_map, or the single file's header (read without loading any tensor)."""
    from pathlib import Path
    from safetensors import safe_open
    directory = Path(checkpoint)
    index = directory / "model.safetensors.index.json"
    if index.exists():
        return key in json.loads(index.read_text()).get("weight_map", {})
    with safe_open(str(directory / "model.safetensors"), framework="pt") as handle:
        return key in handle.keys()
