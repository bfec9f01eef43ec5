"""The tiny decoder LM the reference loads into, and its pure-torch forward.

Parameters are allocated empty (no init pass: loading a large checkpoint must not pay
for a random init) and may be built on `meta`. q/k/v and gate/up are one fused
parameter (as vLLM keeps them) or separate ones (as transformers does);
`canonical_views()` hides the difference behind views of the logical slices.
"""

from __future__ import annotations

import ctypes
import math
import sys
from typing import Callable
import torch
import torch.nn.functional as F
from torch import nn

from .contract import ModelSpec, parameter_table
from .dtypes import poison_
from .fp8 import dequantize
from .quant import format_of
from .quant.fp8_block import dequantize_blocks
from .names import FUSED_PROJECTIONS
from .tp import rank_shapes

__all__ = ["TinyDecoderLM", "rotary_inv_freq", "resampler_position_scale"]

# The tensors of a linear module: its weight, bias, (FP8) weight and input scales, and
# (block FP8) its scale grid.
_SUFFIXES = ("weight", "bias", "weight_scale", "input_scale", "weight_scale_inv")


def rotary_inv_freq(spec: ModelSpec, device: torch.device | str = "cpu") -> torch.Tensor:
    """The constructor value of the non-persistent `inv_freq` buffer (float32, as in HF)."""
    exponents = torch.arange(0, spec.head_dim, 2, dtype=torch.int64, device=device).float()
    return 1.0 / (spec.rope_theta ** (exponents / spec.head_dim))


def resampler_position_scale(spec: ModelSpec, device: torch.device | str = "cpu") -> torch.Tensor:
    """The constructor value of the resampler's non-persistent `position_scale` buffer."""
    return 1.0 + torch.arange(spec.hidden_size, dtype=torch.float32, device=device) / spec.hidden_size


_HUGE_PAGE = 2 * 2**20
_MADV_HUGEPAGE = 14


def _advise_huge_pages(tensor: torch.Tensor) -> None:
    """Ask Linux for transparent huge pages on a large host allocation: loading then
    takes one page fault per 2 MiB instead of per 4 KiB (about 1.6x faster copies)."""
    nbytes = tensor.numel() * tensor.element_size()
    if tensor.device.type != "cpu" or nbytes < 2 * _HUGE_PAGE or _libc is None:
        return
    start = -(-tensor.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
    length = (tensor.data_ptr() + nbytes - start) // _HUGE_PAGE * _HUGE_PAGE
    if length > 0:
        _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), _MADV_HUGEPAGE)


try:
    _libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover - a libc that cannot be opened: no advice
    _libc = None


def _param(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> nn.Parameter:
    data = torch.empty(shape, dtype=dtype, device=device)
    _advise_huge_pages(data)
    return nn.Parameter(data, requires_grad=False)


class _Weights(nn.Module):
    """A module that only holds parameters, registered under the given names."""

    def __init__(self, params: dict[str, nn.Parameter]):
        super().__init__()
        for name, param in params.items():
            self.register_parameter(name, param)


class TinyDecoderLM(nn.Module):
    """HF-shaped module tree: model.embed_tokens, model.layers.N.{self_attn,mlp,...}, lm_head.

    `rank_shapes` gives every parameter this rank's shape; fused modules stack their
    parts' rows in checkpoint order (q, k, v / gate, up).
    """

    def __init__(self, spec: ModelSpec, *, dtype: torch.dtype, device: torch.device | str,
                 tp_size: int = 1, tp_rank: int = 0, fused: bool = True,
                 vocab_shards: str = "even"):
        super().__init__()
        self.spec, self.fused, self.tp_size = spec, fused, tp_size
        self.shapes = rank_shapes(spec, tp_size, tp_rank, vocab_shards)
        # extras, serialized FP8 weights and every scale keep their own dtype
        own_dtype = {e.canonical_name for e in spec.extras} | (
            set(spec.quantized_weights()) if spec.quantized_on_disk else set())
        table = parameter_table(spec)
        self.dtypes = {n: spec.parameter_dtype(n, None)
                       if n in own_dtype or table[n].is_scale else dtype
                       for n in self.shapes}
        self.fused_parts: dict[str, tuple[str, ...]] = {}  # fused param name -> canonical parts
        # [bn, bk] of block FP8 scales (`..._scale_inv`), serialized or installed online
        self.quant_block = spec.quant.block if spec.quant is not None else None
        self.dtype_of_model = dtype  # what a dequantized weight is rounded to

        model = nn.Module()
        model.embed_tokens = _Weights(self._params(["model.embed_tokens.weight"], device))
        model.layers = nn.ModuleList(self._layer(i, device) for i in range(spec.num_layers))
        model.norm = _Weights(self._params(["model.norm.weight"], device))
        model.rotary_emb = nn.Module()
        model.rotary_emb.register_buffer("inv_freq", rotary_inv_freq(spec, device), persistent=False)
        if spec.meta_submodule:
            # Built on meta, as vLLM builds modules for online quantization; it is
            # materialised while loading and moved to the target device only after.
            model.resampler = nn.Module()
            model.resampler.proj = _Weights(self._params(
                ["model.resampler.proj.weight", "model.resampler.proj.bias"], "meta"))
            model.resampler.norm = _Weights(self._params(["model.resampler.norm.weight"], "meta"))
            model.resampler.register_buffer("position_scale", torch.empty(
                spec.hidden_size, device="meta"), persistent=False)
        top_level = [e.canonical_name for e in spec.extras if e.layer is None]
        if top_level:
            model.extras = _Weights(self._params(top_level, device))
        self.model = model
        if spec.tie_word_embeddings:
            self.lm_head = nn.Module()
            self._tie()
        else:
            self.lm_head = _Weights(self._params(["lm_head.weight"], device))

    def _tie(self) -> None:
        """One storage: the head *is* the embedding (the same Parameter object)."""
        self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def tied(self) -> bool:
        return self.lm_head.weight is self.model.embed_tokens.weight

    def untie(self, head: torch.Tensor) -> None:
        """Give a tied model a head of its own holding `head` (a checkpoint head that
        differs from the embedding, under the `untie` variant)."""
        embedding = self.model.embed_tokens.weight
        self.lm_head = _Weights({"weight": nn.Parameter(
            head.to(device=embedding.device, dtype=embedding.dtype), requires_grad=False)})
        self.shapes["lm_head.weight"] = tuple(head.shape)
        self.dtypes["lm_head.weight"] = embedding.dtype

    # ----- construction --------------------------------------------------------------
    def _params(self, canonical: list[str], device) -> dict[str, nn.Parameter]:
        return {n.rsplit(".", 1)[1]: _param(self.shapes[n], self.dtypes[n], device)
                for n in canonical if n in self.shapes}

    def _layer(self, layer: int, device) -> nn.Module:
        prefix = f"model.layers.{layer}"
        block = nn.Module()
        block.input_layernorm = _Weights(self._params([f"{prefix}.input_layernorm.weight"], device))
        block.post_attention_layernorm = _Weights(
            self._params([f"{prefix}.post_attention_layernorm.weight"], device))
        block.self_attn, block.mlp = nn.Module(), nn.Module()
        for fused_name, parts in FUSED_PROJECTIONS.items():
            parent = getattr(block, fused_name.split(".")[0])
            if self.fused:
                params = {}
                for suffix in _SUFFIXES:
                    names = [f"{prefix}.{p}.{suffix}" for p in parts if
                             f"{prefix}.{p}.{suffix}" in self.shapes]
                    if names:
                        rows = sum(self._rows(n) for n in names)
                        params[suffix] = _param((rows,) + self.shapes[names[0]][1:],
                                                self.dtypes[names[0]], device)
                        self.fused_parts[f"{prefix}.{fused_name}.{suffix}"] = tuple(names)
                setattr(parent, fused_name.split(".")[1], _Weights(params))
            else:
                for part in parts:
                    setattr(parent, part.split(".")[1], _Weights(self._params(
                        [f"{prefix}.{part}.{suffix}" for suffix in _SUFFIXES], device)))
        in_layer = [e.canonical_name for e in self.spec.extras if e.layer == layer]
        if in_layer:
            block.extras = _Weights(self._params(in_layer, device))
        for part in ("self_attn.o_proj", "mlp.down_proj"):
            parent = getattr(block, part.split(".")[0])
            setattr(parent, part.split(".")[1], _Weights(self._params(
                [f"{prefix}.{part}.{suffix}" for suffix in _SUFFIXES], device)))
        return block

    def _rows(self, name: str) -> int:
        """Rows a canonical tensor takes in a fused parameter (a scalar scale takes one)."""
        shape = self.shapes[name]
        return shape[0] if shape else 1

    # ----- materialisation -------------------------------------------------------------
    def reset_buffers(self) -> None:
        """Recompute every non-persistent buffer from the spec (what the constructor does)."""
        device = self.model.rotary_emb.inv_freq.device
        self.model.rotary_emb.inv_freq = rotary_inv_freq(self.spec, device)
        if self.spec.meta_submodule:
            buffer = self.model.resampler.position_scale
            self.model.resampler.position_scale = resampler_position_scale(self.spec, buffer.device)

    def materialize(self, device: torch.device | str, poison: bool) -> None:
        """Give every meta tensor storage on `device` (never `.to()` a meta module: torch
        raises), poison allocations if asked (every parameter, and the buffers that were
        on meta: `to_empty` leaves them garbage), then recompute non-persistent buffers."""
        fresh = []
        for module in self.modules():
            own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            if any(t.is_meta for t in own):
                module.to_empty(device=device, recurse=False)
                fresh.extend(module.buffers(recurse=False))
                for param in module.parameters(recurse=False):
                    _advise_huge_pages(param.data)
        if self.spec.tie_word_embeddings:
            self._tie()  # to_empty runs per module: it gave the two owners separate storage
        if poison:
            for tensor in [*self.parameters(), *fresh]:
                poison_(tensor.data)
        self.reset_buffers()

    def move_to(self, device: torch.device | str) -> None:
        """The device move after loading: device only, never dtype; idempotent (and free
        when everything is already there)."""
        target = torch.device(device)
        if any(t.device.type != target.type or (target.index is not None and t.device != target)
               for t in [*self.parameters(), *self.buffers()]):
            self.to(device=device)

    # ----- canonical view ----------------------------------------------------------------
    def canonical_views(self) -> dict[str, torch.Tensor]:
        """Canonical name -> this rank's tensor (a view into a fused parameter if fused)."""
        views = {}
        for name, param in self.named_parameters(remove_duplicate=True):
            parts = self.fused_parts.get(name)
            if parts is None:
                views[name] = param.data
                continue
            row = 0
            for part in parts:
                rows = self._rows(part)
                views[part] = param.data[row:row + rows] if self.shapes[part] else param.data[row]
                row += rows
        return {n: views[n] for n in self.shapes if n in views}

    def adopt(self, name: str, tensor: torch.Tensor) -> bool:
        """Make `tensor` the storage of canonical parameter `name` when that parameter is
        a whole parameter of the same shape and dtype (not part of a fused one)."""
        if name in {p for parts in self.fused_parts.values() for p in parts}:
            return False
        param = self.get_parameter(name)
        if param.shape != tensor.shape or param.dtype != tensor.dtype:
            return False
        param.data = tensor
        return True

    def adopt_fused(self, name: str, tensor: torch.Tensor) -> bool:
        """Make `tensor` the storage of fused parameter `name` (same shape and dtype)."""
        param = self.get_parameter(name)
        if name not in self.fused_parts or param.shape != tensor.shape \
                or param.dtype != tensor.dtype:
            return False
        param.data = tensor
        return True

    def install_fp8(self, quantized: dict[str, tuple[torch.Tensor, torch.Tensor]],
                    scale_suffix: str = "weight_scale",
                    block: tuple[int, int] | None = None) -> None:
        """Hold FP8 codes and scales for the canonical weights in `quantized` (name ->
        (codes, effective scale)). The first time, each in-memory weight (fused or not)
        becomes an FP8 parameter with a `weight_scale` beside it (one slot per part, or one
        per row; block FP8: a `weight_scale_inv` grid, the parts' block rows stacked, with
        `block` its [bn, bk]); after that, new values are copied into the same storages,
        which must never move (CUDA graphs hold their addresses)."""
        attr, tail = scale_suffix, scale_suffix[len("weight"):]
        if block is not None:
            self.quant_block = block
        for param_name, param in list(self.named_parameters()):
            parts = self.fused_parts.get(param_name, (param_name,))
            if not param_name.endswith(".weight") or parts[0] not in quantized:
                continue
            codes = torch.cat([quantized[p][0] for p in parts])
            scales = [quantized[p][1] for p in parts]
            scale = torch.cat(scales) if scales[0].dim() else (
                torch.stack(scales) if len(parts) > 1 else scales[0])
            module = self.get_submodule(param_name.rsplit(".", 1)[0])
            if param.dtype == codes.dtype and hasattr(module, attr):
                param.data.copy_(codes.to(param.device))
                getattr(module, attr).data.copy_(scale.to(param.device))
                continue
            module.weight = nn.Parameter(codes.to(param.device), requires_grad=False)
            setattr(module, attr, nn.Parameter(scale.to(param.device), requires_grad=False))
            for part in parts:
                self.shapes[part + tail] = tuple(quantized[part][1].shape)
                self.dtypes[part + tail] = torch.float32
                self.dtypes[part] = codes.dtype
            if len(parts) > 1:
                self.fused_parts[param_name + tail] = tuple(p + tail for p in parts)

    def dequantize_block_weights(self) -> None:
        """Variant `fp8_block_storage: dequantized`: each block-FP8 weight (fused or not)
        becomes codes · weight_scale_inv in float32, rounded once to the model's dtype, and
        its scale grid is dropped. Each canonical part is dequantized with its own grid, so
        a fused parameter's parts never share a block."""
        views = self.canonical_views()
        for param_name, _ in list(self.named_parameters()):
            if not param_name.endswith(".weight_scale_inv"):
                continue
            weight_name = param_name[: -len("_scale_inv")]
            parts = self.fused_parts.pop(param_name, None)
            parts = [p[: -len("_scale_inv")] for p in parts] if parts else [weight_name]
            module = self.get_submodule(param_name.rsplit(".", 1)[0])
            dequantized = torch.cat([dequantize_blocks(views[p], views[p + "_scale_inv"],
                                                       self.quant_block) for p in parts])
            module.weight = nn.Parameter(dequantized.to(self.dtype_of_model),
                                         requires_grad=False)
            delattr(module, "weight_scale_inv")
            for part in parts:
                self.dtypes[part] = self.dtype_of_model
                self.shapes.pop(part + "_scale_inv", None)
                self.dtypes.pop(part + "_scale_inv", None)

    def named_canonical_buffers(self) -> dict[str, torch.Tensor]:
        return {n: b for n, b in self.named_buffers() if n.startswith("model.")}

    # ----- forward (tp_size 1) -----------------------------------------------------------
    def forward(self, input_ids: torch.Tensor,
                before_layer: Callable[[int], None] | None = None,
                after_layer: Callable[[int], None] | None = None) -> torch.Tensor:
        """Logits of a llama-style decoder, computed in float32 from the loaded weights.
        Weights are read layer by layer, when the layer runs (after `before_layer(i)`,
        which an offloader uses to bring layer i's weights to the device)."""
        if self.tp_size != 1:
            raise NotImplementedError("the reference forward runs at tp_size=1 only")
        spec = self.spec

        quant = spec.quant  # a serialized format's weights: the format dequantizes them
        quantized = set(spec.quantized_weights()) if quant is not None else set()
        tail = format_of(quant).scale_suffix[len("weight"):] if quant is not None else ""

        def weights(prefix: str) -> dict[str, torch.Tensor]:
            views = self.canonical_views()
            return {n: format_of(quant).dequantize(quant, t, views[n + tail])
                    if n in quantized
                    else dequantize(t, views[n + "_scale"]) if n + "_scale" in views
                    else dequantize_blocks(t, views[n + "_scale_inv"], self.quant_block)
                    if n + "_scale_inv" in views else t.float() for n, t in views.items()
                    if n.startswith(prefix) and ".extras." not in n}  # extras feed nothing

        w = weights("model.embed_tokens.")
        hidden = F.embedding(input_ids, w["model.embed_tokens.weight"])
        seq = input_ids.shape[-1]
        positions = torch.arange(seq, device=hidden.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.model.rotary_emb.inv_freq.float())
        cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()

        def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + spec.rms_norm_eps) * weight

        def linear(x: torch.Tensor, prefix: str) -> torch.Tensor:
            return F.linear(x, w[f"{prefix}.weight"], w.get(f"{prefix}.bias"))

        def rotate(x: torch.Tensor) -> torch.Tensor:
            half = x.shape[-1] // 2
            return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

        for layer in range(spec.num_layers):
            if before_layer is not None:
                before_layer(layer)
            p = f"model.layers.{layer}"
            w = weights(f"{p}.")
            x = rms_norm(hidden, w[f"{p}.input_layernorm.weight"])
            heads = [linear(x, f"{p}.self_attn.{m}").unflatten(-1, (-1, spec.head_dim))
                     .transpose(-2, -3) for m in ("q_proj", "k_proj", "v_proj")]
            q, k, v = rotate(heads[0]), rotate(heads[1]), heads[2]
            group = spec.num_heads // spec.num_kv_heads
            k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                  scale=1.0 / math.sqrt(spec.head_dim))
            hidden = hidden + linear(attn.transpose(-2, -3).flatten(-2), f"{p}.self_attn.o_proj")
            x = rms_norm(hidden, w[f"{p}.post_attention_layernorm.weight"])
            gated = F.silu(linear(x, f"{p}.mlp.gate_proj")) * linear(x, f"{p}.mlp.up_proj")
            hidden = hidden + linear(gated, f"{p}.mlp.down_proj")
            if after_layer is not None:
                after_layer(layer)
        hidden = rms_norm(hidden, self.model.norm.weight.float())
        return F.linear(hidden, self.lm_head.weight.float())  # the live head, tied or not
