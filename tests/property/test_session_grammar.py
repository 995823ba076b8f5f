"""The step grammar and counters: a Session stepped with the procedural model.

Random streams of loop events — legal and illegal, with gradient accumulation
and epoch-based counting — go to a real ``Session`` and to
:class:`specs.reference.StepGrammarModel`. After every call: both raise or
neither does; the position and counters agree; and the event a modifier
received carries exactly the step and batch the model says.
"""

from __future__ import annotations

import copy

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from modfsm.engine import EventType, IllegalTransitionError
from modfsm.engine.loop.session import Session
from specs.reference import StepGrammarModel
from tests.doubles import EventLog

LOOP_EVENTS = [
    "batch_start", "loss_calculated", "optim_pre_step", "optim_post_step", "batch_end",
    "calibration_epoch_start", "sequential_epoch_end", "calibration_epoch_end",
]  # fmt: skip


class GrammarAgainstModel(RuleBasedStateMachine):
    session: Session
    model: StepGrammarModel
    log: EventLog

    @initialize(per_step=st.integers(1, 4), steps_per_epoch=st.one_of(st.none(), st.integers(1, 5)))
    def setup(self, per_step: int, steps_per_epoch: int | None) -> None:
        self.log = EventLog(start=None)
        self.session = Session()
        self.session.initialize(recipe=[self.log], batches_per_step=per_step,
                                steps_per_epoch=steps_per_epoch)  # fmt: skip
        self.model = StepGrammarModel(per_step)
        self.steps_per_epoch = steps_per_epoch

    @rule(name=st.sampled_from(LOOP_EVENTS), partial=st.booleans())
    def send(self, name: str, partial: bool) -> None:
        partial = partial and name == "optim_pre_step"
        try:
            expected = self.model.apply(name, partial)
        except RuntimeError:
            expected = None
        seen_before = len(self.log.seen)
        refused: IllegalTransitionError | None = None
        try:
            self.session.event(EventType(name), partial=partial)
        except IllegalTransitionError as error:
            refused = error
        if refused is not None:
            assert expected is None, f"the session refused {name}: {refused}"
            assert len(self.log.seen) == seen_before
            return
        assert expected is not None, f"the session accepted {name} in {self.model.position}"
        assert len(self.log.seen) == seen_before + 1
        kind, step, batch, index = self.log.seen[-1]
        assert (kind, step, batch) == (name, *expected)
        spe = self.steps_per_epoch
        assert index == (step if spe is None else step / spe)

    @rule(data=st.data())
    def send_a_legal_event(self, data: st.DataObject) -> None:
        legal = []
        for name in LOOP_EVENTS:
            for partial in (False, True) if name == "optim_pre_step" else (False,):
                trial = copy.deepcopy(self.model)
                try:
                    trial.apply(name, partial)
                except RuntimeError:
                    continue
                legal.append((name, partial))
        if legal:
            name, partial = data.draw(st.sampled_from(legal))
            self.send(name, partial)

    @rule()
    def finalize(self) -> None:
        try:
            self.model.apply("finalize")
            expected_ok = True
        except RuntimeError:
            expected_ok = False
        try:
            self.session.finalize()
            ok = True
        except IllegalTransitionError:
            ok = False
        assert ok == expected_ok

    @invariant()
    def same_position_and_counters(self) -> None:
        session, model = self.session, self.model
        assert session.position == model.position
        assert (session.global_step, session.global_batch, session.batches_since_step) == (
            model.global_step, model.global_batch, model.batches_since_step,
        )  # fmt: skip


TestGrammarAgainstModel = GrammarAgainstModel.TestCase
