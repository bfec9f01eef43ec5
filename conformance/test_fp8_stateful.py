"""Sequences (P5 as a state machine): load → reload → reload-some-layers → reload-again,
with the candidate and the reference side by side, for plain, online-FP8 and serialized-
FP8 models. After every step the candidate's state equals the reference's bit for bit and
no storage has moved since the first load (biases and norms surviving the processing
included). Hypothesis shrinks a failure to the shortest sequence that shows it."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule, run_state_machine_as_test)

from generators.cases import LoadCase
from generators.fp8 import reload_cases, scale_tables
from reference.names import layout_keys
from .compare import Divergence, compare_states, run_outcome
from .quant_compare import refine_quantized
from .harness import candidate_call, count_example, fail_on, seed_machine
from .session import current

STEPS = 5  # reloads per sequence after the first load


class LoadReloadMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.run = current()
        self.tmp = Path(tempfile.mkdtemp(prefix="loadcheck-stateful-"))
        self.case: LoadCase | None = None
        self.expected = self.found = None
        self.steps: list[str] = []
        self.pointers: dict[str, int] = {}
        self.written = 0

    # ----- helpers -----------------------------------------------------------------------
    def _write(self, plan) -> Path:
        self.written += 1
        return plan.write(self.tmp / f"checkpoint-{self.written}")

    def _fail(self, divergences: list[Divergence], directory: Path | None) -> None:
        __tracebackhide__ = True
        fail_on(divergences, "P5 reload sequence", self.case, directory,
                title="after " + " → ".join(self.steps))

    def _reload(self, plan, what: str) -> None:
        __tracebackhide__ = True
        directory = self._write(plan)
        self.last = (plan, what)
        self.steps.append(what)
        run, spec, options = self.run, self.case.plan.spec, self.case.options
        want = run_outcome(lambda: run.reference.reload(self.expected, str(directory), spec,
                                                        options))
        got = candidate_call(lambda: run.candidate.reload(self.found, str(directory), spec,
                                                          options))
        if (want.error is None) != (got.error is None):
            self._fail([Divergence("error", "reload", f"reload: reference "
                                   f"{want.describe()}; candidate {got.describe()}")], directory)
        if want.result is not None and got.result is not None:
            self.expected, self.found = want.result, got.result
        self.directory = directory

    # ----- the steps ---------------------------------------------------------------------
    @initialize(data=st.data())
    def load_first(self, data):
        count_example()
        run = self.run
        self.case, _ = data.draw(reload_cases(run.capabilities, run.device, support=run.support),
                                 label="A")
        directory = self._write(self.case.plan)
        mode = ("serialized FP8" if self.case.plan.spec.fp8_checkpoint else
                "online FP8" if self.case.options.quantize else "plain")
        self.steps.append(f"load A ({mode}, seed {self.case.plan.data_seed})")
        spec, options = self.case.plan.spec, self.case.options
        want = run_outcome(lambda: run.reference.load(str(directory), spec, options))
        got = candidate_call(lambda: run.candidate.load(str(directory), spec, options))
        if want.result is None or got.result is None:
            return  # loading itself is the other properties' business
        self.expected, self.found = want.result, got.result
        self.pointers = {n: t.data_ptr() for n, t in got.result.state.items()}
        self.directory = directory

    def _live(self) -> bool:
        return self.found is not None

    @precondition(lambda self: not self._live())
    @rule()
    def nothing_to_reload(self):
        """The first load failed on one side (the loading properties report that, or the
        baseline knows it): no sequence to run, but Hypothesis needs a rule to take."""

    @precondition(_live)
    @rule(data=st.data())
    def reload_all(self, data):
        plan = self._other_values(data)
        self._reload(plan, f"reload B (seed {plan.data_seed})")

    @precondition(_live)
    @rule(data=st.data())
    def reload_some_layers(self, data):
        spec = self.case.plan.spec
        layers = data.draw(st.lists(st.integers(0, spec.num_layers - 1), min_size=1,
                                    unique=True), label="layers")
        keep = tuple(f"model.layers.{i}." for i in layers)
        plan = self._other_values(data)
        plan = replace(plan, dropped=tuple(k for k in layout_keys(spec, plan.fused)
                                           if not k.startswith(keep)))
        self._reload(plan, f"reload layers {sorted(layers)} (seed {plan.data_seed})")

    @precondition(lambda self: self._live() and len(self.steps) > 1)
    @rule()
    def reload_the_same_again(self):
        plan, what = self.last
        self._reload(plan, f"again: {what}")

    def _other_values(self, data):
        plan = self.case.plan
        seed = data.draw(st.integers(0, 2**16), label="seed")
        if plan.spec.fp8_checkpoint:
            scales = data.draw(scale_tables(plan.spec, fused_on_disk=plan.fused), label="scales")
            plan = replace(plan, fp8_scales=tuple(sorted(scales.items())))
        return replace(plan, data_seed=seed)

    # ----- after every step --------------------------------------------------------------
    @invariant()
    def candidate_equals_reference_in_place(self):
        if self.found is None:
            return
        expected, found = self.expected.state, self.found.state
        divergences = refine_quantized(compare_states(expected, found), expected, found,
                                       self.case.plan.spec, self.case.options)
        divergences += [Divergence("placement", n, f"{n}: its storage moved (data_ptr "
                                   f"{self.pointers[n]:#x} -> {t.data_ptr():#x})",
                                   {"expected": self.pointers[n], "found": t.data_ptr()})
                        for n, t in found.items()
                        if n in self.pointers and t.data_ptr() != self.pointers[n]]
        self._fail(divergences, self.directory)

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.mark.requires("load", "reload")
def test_load_reload_sequences():
    budget = settings.default.max_examples
    run_state_machine_as_test(seed_machine(LoadReloadMachine), settings=settings(
        max_examples=max(10, budget // 4), stateful_step_count=STEPS, deadline=None))
