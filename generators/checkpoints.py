"""Checkpoint plans: a spec's weights in one on-disk layout, with deliberate defects.

A :class:`CheckpointPlan` is a small, readable value (what Hypothesis prints and shrinks);
`write(directory)` turns it into files any real loader can open. Layouts: split or fused
q/k/v and gate/up, one file or 2-4 shards with an index, any key order. Defects: dropped
keys (a single missing bias, say), near-miss and extra keys, extra int tensors, a wrong
shape, a float tensor for an integer parameter, keys fed twice, a stray unindexed shard,
an empty shard, an index that disagrees with its shards, header spans that disagree with
shapes, a tied head in the checkpoint (equal to the embedding or not) and lm_head.* extras.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from hypothesis import strategies as st

from reference.checkpoint import shard_file_name, write_checkpoint, write_safetensors
from reference.contract import DTYPES, ModelSpec, parameter_table, torch_dtype
from reference.dtypes import PLAIN_FLOATS, SAFETENSORS_CODES
from reference.names import layout_keys, to_checkpoint_tensors
from reference.quant.mxfp4 import SCALE_BYTES
from .files import read_header_keys, respan, rewrite_index
from .tensors import at_rounding_ties, seeded_tensor

__all__ = ["CheckpointPlan", "ExtraKey", "checkpoint_plans", "canonical_tensors",
           "near_miss_keys", "STRAY_FILE"]

# Keys beside a head that no parameter takes (a head bias, a quantization scale).
LM_HEAD_EXTRAS = ("lm_head.bias", "lm_head.weight_scale")

# Dtypes found on disk that no generated model has: float64 checkpoints (a converted or
# exported one) loaded into float32 / bfloat16 / float16 parameters.
DISK_ONLY = ("float64",)

# A stray full checkpoint beside the shards, as some repos ship `consolidated.safetensors`.
STRAY_FILE = "consolidated.safetensors"


@dataclass(frozen=True)
class ExtraKey:
    """A key no parameter has (written with its own dtype and shape)."""

    key: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class CheckpointPlan:
    spec: ModelSpec
    fused: bool = False                 # q/k/v and gate/up fused on disk
    disk_dtype: str = "float32"          # dtype of float weights on disk
    shards: int = 1                      # 1: model.safetensors; more: shards + index
    order_seed: int = 0                  # key order in files and shard assignment
    data_seed: int = 0
    dropped: tuple[str, ...] = ()        # keys of the layout left out
    extra_keys: tuple[ExtraKey, ...] = ()
    wrong_shape: tuple[str, ...] = ()    # keys written with one more row
    float_into_int: tuple[str, ...] = ()  # int / bool / FP8 keys written as float32
    doubled: tuple[str, ...] = ()        # split keys also written inside a fused key
    stray_file: bool = False             # an unindexed full checkpoint with other values
    head_in_tied: bool = False           # lm_head.weight written although tied
    tied_head_equal: bool = False        # ... holding the embedding's values (save_pretrained)
    empty_shard: bool = False            # one more shard file, with no tensors, unindexed
    unindexed: tuple[str, ...] = ()      # keys in a shard's header, absent from weight_map
    phantom: tuple[str, ...] = ()        # keys in weight_map, in no shard's header
    span_deltas: tuple[tuple[str, int], ...] = ()  # key -> bytes its header span is off by
    # FP8 (spec.fp8_checkpoint: serialized; otherwise the float weights online FP8 sees)
    fp8_scales: tuple[tuple[str, float], ...] = ()   # canonical scale name -> value
    scale_as_vector: bool = False        # scalar scales written with shape [1], not ()
    weight_gain: float = 1.0             # float linear weights multiplied by this
    zero_weights: tuple[str, ...] = ()   # canonical linear weights written all zero
    zero_rows: tuple[str, ...] = ()      # ... with one inner row zero (per-row scales)
    amax_spikes: tuple[str, ...] = ()    # ... whose amax is one negative element
    non_finite: tuple[tuple[str, float], ...] = ()  # (canonical name, value at index 0)
    # block FP8 (issue 16): linear weights whose top-left 4x8 corner is zero (a whole zero
    # block for every block the generators draw, bn <= 4 and bk <= 8)
    zero_blocks: tuple[str, ...] = ()
    # MXFP4 (issue 16): scale bytes drawn in [low, high] instead of the whole range 2 .. 252
    mxfp4_scale_range: tuple[int, int] | None = None

    # ----- the tensors ----------------------------------------------------------------
    def canonical(self) -> dict[str, torch.Tensor]:
        """The values the reference will hold, in the disk dtype, per canonical name."""
        values = canonical_tensors(self.spec, self.data_seed, torch_dtype(self.disk_dtype))
        quantized = self.spec.quantized_weights()
        if self.spec.quantized_on_disk:
            for name in quantized:  # every finite code; NaN codes only as a defect
                codes = values[name]
                values[name] = torch.where(codes.float().isnan(), codes.float().new_tensor(
                    448.0), codes.float()).to(codes.dtype)
            scales, table = dict(self.fp8_scales), parameter_table(self.spec)
            for name in values:
                if table[name].role in ("weight_scale", "input_scale"):
                    values[name] = torch.tensor(scales.get(name, 1.0), dtype=torch.float32)
                elif table[name].role == "block_scale" and self.spec.quant.format == "mxfp4":
                    values[name] = mxfp4_scale_bytes(values[name], self.mxfp4_scale_range)
                elif table[name].role == "block_scale":  # block scales over 2^-20 .. 2^10
                    values[name] = torch.exp2((values[name] * 4).clamp(-20, 10)).float()
        elif self.weight_gain != 1.0:
            for name in quantized:
                values[name] = (values[name].float() * self.weight_gain).to(values[name].dtype)
        for name in self.amax_spikes:  # before zero_weights: an all-zero one stays zero
            spiked = values[name].float().clone()
            spiked.view(-1)[-1] = -8 * float(spiked.abs().max().clamp(min=1e-3))
            values[name] = spiked.to(values[name].dtype)
        for name in self.zero_weights:
            values[name] = torch.zeros_like(values[name])
        for name in self.zero_blocks:
            values[name] = values[name].clone()
            values[name][:4, :8] = 0
        for name in self.zero_rows:
            values[name] = values[name].clone()
            values[name][len(values[name]) // 2] = 0
        for name, value in self.non_finite:
            bad = values[name].float().reshape(-1)
            bad[0] = value
            values[name] = bad.reshape(values[name].shape).to(values[name].dtype)
        return values

    def items(self) -> list[tuple[str, torch.Tensor]]:
        """(key, tensor) in the order they are written."""
        tensors = to_checkpoint_tensors(self.spec, self.canonical(), self.fused)
        if self.head_in_tied and self.spec.tie_word_embeddings:
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone() \
                if self.tied_head_equal else seeded_tensor(self.data_seed + 7, torch.float32, (
                    self.spec.vocab_size, self.spec.hidden_size)).to(torch_dtype(self.disk_dtype))
        for key in self.dropped:
            tensors.pop(key, None)
        for key in self.wrong_shape:
            t = tensors[key]
            tensors[key] = torch.cat([t, t[:1]]) if t.dim() else t.reshape(1)
        for key in self.float_into_int:
            tensors[key] = tensors[key].float()
        if self.scale_as_vector:
            for key in [k for k in tensors if k.endswith("_scale")]:
                tensors[key] = tensors[key].reshape(1)
        if self.doubled:
            other = to_checkpoint_tensors(self.spec, self.canonical(), not self.fused)
            for key in self.doubled:
                tensors[key] = other[key]
        for i, extra in enumerate(self.extra_keys):
            tensors[extra.key] = seeded_tensor(self.data_seed + 100 + i,
                                               torch_dtype(extra.dtype), extra.shape)
        # dtypes safetensors cannot store (fnuz FP8, sub-byte ints) are never written
        items = sorted((k, t) for k, t in tensors.items() if t.dtype in SAFETENSORS_CODES)
        random.Random(self.order_seed).shuffle(items)
        return items

    def write(self, directory: Path) -> Path:
        items = self.items()
        count = max(1, min(self.shards, len(items)))
        rng = random.Random(self.order_seed + 1)
        shards: list[list] = [[] for _ in range(count)]
        for i, item in enumerate(items):  # every shard gets one, then at random
            shards[i if i < count else rng.randrange(count)].append(item)
        if count > 1:
            indexed = self._index_defects(shards)
            if self.empty_shard:
                shards.append([])  # written like any shard; no key names it
        write_checkpoint(directory, self.spec.to_hf_config(), shards)
        if count > 1 and (self.unindexed or self.phantom):
            rewrite_index(directory, indexed)
        for key, delta in self.span_deltas:
            files = [f for f in directory.glob("*.safetensors") if key in read_header_keys(f)]
            for path in files:
                respan(path, key, delta)
        if self.stray_file and count > 1:
            stray = canonical_tensors(self.spec, self.data_seed + 1,
                                      torch_dtype(self.disk_dtype))
            write_safetensors(directory / STRAY_FILE,
                              sorted(to_checkpoint_tensors(self.spec, stray, self.fused).items()))
        return directory

    def _repr_pretty_(self, printer, cycle) -> None:
        """One line in Hypothesis' failing-example report (`repr` keeps every field)."""
        printer.text(f"CheckpointPlan<{self.spec.summary()} | {self.summary()}>")

    def _index_defects(self, shards: list[list]) -> dict[str, str]:
        """The weight_map to write: `unindexed` keys left out of it; `phantom` keys taken
        out of their shard (the first shard keeps at least one tensor) and left in it."""
        weight_map = {key: shard_file_name(i, len(shards) + self.empty_shard)
                      for i, items in enumerate(shards) for key, _ in items}
        for items in shards:
            items[:] = [(k, t) for k, t in items if k not in self.phantom] or items[:1]
        return {k: f for k, f in weight_map.items() if k not in self.unindexed}

    def summary(self) -> str:
        """One readable line: layout, then each defect."""
        parts = ["fused" if self.fused else "split", f"disk={self.disk_dtype}",
                 f"{self.shards} shards" if self.shards > 1 else "1 file"]
        for label, keys in (("dropped", self.dropped), ("wrong shape", self.wrong_shape),
                            ("float into int", self.float_into_int), ("fed twice", self.doubled),
                            ("extra", tuple(e.key for e in self.extra_keys))):
            if keys:
                parts.append(f"{label}: {', '.join(keys)}")
        if self.stray_file and self.shards > 1:
            parts.append(f"stray {STRAY_FILE}")
        if self.head_in_tied and self.spec.tie_word_embeddings:
            parts.append("lm_head.weight in a tied checkpoint" + (
                " (equal to the embedding)" if self.tied_head_equal else ""))
        if self.shards > 1 and self.empty_shard:
            parts.append("an empty shard")
        if self.shards > 1:
            for label, keys in (("in a header, not in weight_map", self.unindexed),
                                ("in weight_map, in no header", self.phantom)):
                if keys:
                    parts.append(f"{label}: {', '.join(keys)}")
        if self.span_deltas:
            parts.append("header span off: " + ", ".join(f"{k} {d:+d} bytes"
                                                         for k, d in self.span_deltas))
        if self.fp8_scales:
            values = sorted({v for _, v in self.fp8_scales})
            parts.append(f"{len(self.fp8_scales)} FP8 scales in [{values[0]:.3g}, "
                         f"{values[-1]:.3g}]" + (" as [1]" if self.scale_as_vector else ""))
        if self.weight_gain != 1.0:
            parts.append(f"linear weights x{self.weight_gain:g}")
        if self.zero_weights:
            parts.append(f"all zero: {', '.join(self.zero_weights)}")
        if self.zero_rows:
            parts.append(f"a zero row in: {', '.join(self.zero_rows)}")
        if self.amax_spikes:
            parts.append(f"amax in one element of: {', '.join(self.amax_spikes)}")
        if self.zero_blocks:
            parts.append(f"a zero block in: {', '.join(self.zero_blocks)}")
        if self.mxfp4_scale_range:
            parts.append("MXFP4 scale bytes in [{}, {}]".format(*self.mxfp4_scale_range))
        if self.non_finite:
            parts.append("non-finite: " + ", ".join(f"{n}[0]={v}" for n, v in self.non_finite))
        return "; ".join(parts)


def mxfp4_scale_bytes(seeded: torch.Tensor, span: tuple[int, int] | None = None
                      ) -> torch.Tensor:
    """MXFP4 E8M0 scale bytes from seeded bytes: spread over every byte whose scale keeps
    each code a normal float32 (2^-125 .. 2^125), or over `span`, both ends written; never
    0xFF (NaN, and the poison pattern: an unwritten scale is always told apart)."""
    low, high = span or (SCALE_BYTES.start, SCALE_BYTES.stop - 1)
    flat = (low + seeded.to(torch.int32).reshape(-1) % (high - low + 1)).clone()
    flat[:1], flat[-1:] = low, high
    return flat.to(torch.uint8).reshape(seeded.shape)


def canonical_tensors(spec: ModelSpec, seed: int, disk_dtype: torch.dtype
                      ) -> dict[str, torch.Tensor]:
    """Seeded values per canonical parameter: floats in `disk_dtype` (a quarter of them on
    rounding ties, `at_rounding_ties`), extras in their own."""
    out = {}
    for i, (name, shape) in enumerate(spec.parameter_shapes().items()):
        dtype = spec.parameter_dtype(name)
        out[name] = seeded_tensor(seed * 1000 + i, torch.float32 if dtype in PLAIN_FLOATS
                                  else dtype, shape)
        if dtype in PLAIN_FLOATS:
            out[name] = at_rounding_ties(out[name].to(disk_dtype))
    return out


def near_miss_keys(key: str) -> list[str]:
    """Keys that a substring or prefix match would confuse with `key`, and exact per-
    component mapping must not: a doubled letter, a zero-padded index, a suffix, a prefix."""
    parts = key.split(".")
    out = [".".join(parts[:-2] + ["q" + parts[-2]] + parts[-1:])] if len(parts) >= 2 else []
    out += [".".join(p if not p.isdigit() else "0" + p for p in parts)] if any(
        p.isdigit() for p in parts) else []
    out += [key + "_scale", "base_model." + key]
    return [k for k in out if k != key]


@st.composite
def checkpoint_plans(draw, spec: ModelSpec, *, fused_choices=(False, True), max_shards: int = 4,
                     min_shards: int = 1, near_miss: bool = False,
                     drop: bool = False, extra: bool = False, wrong_shape: bool = False,
                     wrong_dtype: bool = False, doubled: bool = False, stray: bool = False,
                     casts: bool = False) -> CheckpointPlan:
    """A plan for `spec`. Each defect flag allows that defect; none is forced, except
    that `near_miss` writes at least one near-miss key (P14's subject)."""
    fused = draw(st.sampled_from(fused_choices))
    keys = sorted(layout_keys(spec, fused))
    # `casts` (the casts property, whose subject they are): every disk dtype as often,
    # float64 included, so each conversion a loader makes (and its rounding ties) is met
    # within a few examples. Other properties keep the model's dtype twice as likely (most
    # checkpoints are saved in it) and the draw they had, so their examples stay the same.
    disk_dtypes = DISK_ONLY + DTYPES if casts else (spec.dtype,) + DTYPES
    plan = dict(fused=fused, disk_dtype=draw(st.sampled_from(disk_dtypes)),
                shards=draw(st.integers(min(min_shards, max_shards), max_shards)), order_seed=draw(st.integers(0, 2**16)),
                data_seed=draw(st.integers(0, 2**16)))
    if drop:
        biases = [k for k in keys if k.endswith(".bias")]
        # A single missing bias is the seed-004 case: weigh it, then any set of keys.
        plan["dropped"] = tuple(draw(st.one_of(
            st.just([]), st.sampled_from(biases).map(lambda k: [k]) if biases else st.just([]),
            st.lists(st.sampled_from(keys), max_size=3, unique=True))))
    near = st.sampled_from(keys).flatmap(lambda k: st.sampled_from(near_miss_keys(k)))
    if near_miss:
        missed = draw(st.lists(near, min_size=1, max_size=2, unique=True))
        plan["extra_keys"] = tuple(ExtraKey(k, spec.dtype, (2,)) for k in missed if k not in keys)
    if extra:
        extras = st.builds(ExtraKey, key=st.one_of(near, st.just("model.layers.0.mlp.g_idx"),
                                                   st.just("model.unused_buffer")),
                           dtype=st.sampled_from(["float32", "int32", "bool", "int8"]),
                           shape=st.sampled_from([(4,), (2, 2)]))
        chosen = draw(st.lists(extras, max_size=2, unique_by=lambda e: e.key))
        plan["extra_keys"] = plan.get("extra_keys", ()) + tuple(
            e for e in chosen if e.key not in keys)
        plan["head_in_tied"] = draw(st.booleans())
        plan["tied_head_equal"] = draw(st.booleans())  # save_pretrained writes the tied head
        # lm_head.* beside the head (a bias, a quantization scale): never the head itself
        head_extra = draw(st.sampled_from(("",) + LM_HEAD_EXTRAS))
        if head_extra:
            plan["extra_keys"] += (ExtraKey(head_extra, "float32", (spec.vocab_size,)
                                            if head_extra.endswith("bias") else ()),)
    if wrong_shape:
        plan["wrong_shape"] = tuple(draw(st.lists(st.sampled_from(keys), max_size=1)))
        # a header byte span larger or smaller than shape x itemsize (whole or part elements)
        plan["span_deltas"] = tuple(draw(st.lists(st.tuples(
            st.sampled_from(keys), st.sampled_from((4, -4, 1, -1))), max_size=1)))
    if wrong_dtype:
        typed = [e.canonical_name for e in spec.extras]
        plan["float_into_int"] = tuple(draw(st.lists(st.sampled_from(typed), max_size=1))) \
            if typed else ()
    if doubled:
        other = sorted(set(layout_keys(spec, not fused)) - set(keys))
        plan["doubled"] = tuple(draw(st.lists(st.sampled_from(other), max_size=1))) \
            if other else ()
    if stray:
        plan["stray_file"] = draw(st.booleans())
        plan["empty_shard"] = draw(st.booleans())
        index_defect = draw(st.sampled_from(("", "unindexed", "phantom")))
        if index_defect:
            plan[index_defect] = (draw(st.sampled_from(keys)),)
    return CheckpointPlan(spec=spec, **plan)
