"""Load cases: a checkpoint plan and the options to load it with, limited to what the
candidate claims (a loader without `tp` never sees tp_size > 1, and so on)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from reference.contract import DTYPES, LoadOptions, ModelSupport
from .checkpoints import CheckpointPlan, checkpoint_plans
from .specs import model_specs

__all__ = ["LoadCase", "load_cases"]


@dataclass(frozen=True)
class LoadCase:
    plan: CheckpointPlan
    options: LoadOptions

    def summary(self) -> str:
        return f"{self.plan.spec.summary()} | {self.plan.summary()} | {self.options.summary()}"

    def _repr_pretty_(self, printer, cycle) -> None:
        """Hypothesis prints a failing example's draws with this: the case's one-line
        summary, not its sixty-line repr (the record keeps the full plan and spec)."""
        printer.text(f"LoadCase<{self.summary()}>")


@st.composite
def load_cases(draw, capabilities: frozenset[str], *, device: str = "cpu", tp: bool = False,
               meta: bool = False, extras: bool = False, drop: bool = False,
               extra_keys: bool = False, near_miss: bool = False, wrong_shape: bool = False, wrong_dtype: bool = False,
               doubled: bool = False, stray: bool = False, min_shards: int = 1, strict=None, track=None,
               dtype_override: bool = False, extra_strategy=None, casts: bool = False,
               support: ModelSupport = ModelSupport()) -> LoadCase:
    """A case within `capabilities`. The keyword flags say which features and defects the
    property wants; `strict` / `track` force those options (None: drawn when claimed);
    `support` is the loader's declared model support."""
    can = capabilities.__contains__
    tp_size = draw(st.sampled_from([1, 2, 4])) if tp and can("tp") else 1
    spec = draw(model_specs(tp_size=tp_size, meta_submodule=meta and can("meta_submodule"),
                            extras=extras and can("extras"), extra_strategy=extra_strategy,
                            support=support))
    native = spec.fused_on_disk_natively
    plan = draw(checkpoint_plans(
        spec, fused_choices=(native, not native) if can("fused_on_disk") else (native,),
        max_shards=4 if can("sharded") else 1, min_shards=min_shards, drop=drop, extra=extra_keys, near_miss=near_miss,
        wrong_shape=wrong_shape, wrong_dtype=wrong_dtype and can("extras"),
        doubled=doubled and can("fused_on_disk"), stray=stray and can("sharded"), casts=casts))

    def flag(name: str, forced) -> bool:
        if forced is not None:
            return bool(forced) and can(name)
        return draw(st.booleans()) if can(name) else False

    options = LoadOptions(
        device=device,
        dtype=draw(st.sampled_from((None,) + tuple(d for d in DTYPES if d in support.dtypes)))
        if dtype_override else None,
        tp_size=tp_size, tp_rank=draw(st.integers(0, tp_size - 1)),
        strict=flag("strict", strict), track=flag("track", track),
        meta_init=flag("meta_init", None if meta else False),
        poison=can("poison"))
    return LoadCase(plan, options)
