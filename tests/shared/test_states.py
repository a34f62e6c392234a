"""Job states: the vocabulary and which transitions are legal."""

from __future__ import annotations

import pytest

from shared.states import FINAL_STATES, UNFINISHED_STATES, JobState, can_transition

Q, P, S, F = JobState.QUEUED, JobState.PROCESSING, JobState.SUCCEEDED, JobState.FAILED


def test_the_four_states_and_their_wire_names() -> None:
    assert [s.value for s in JobState] == ["queued", "processing", "succeeded", "failed"]
    assert JobState("failed") is F and F == "failed"  # a StrEnum compares with the stored string


def test_only_succeeded_and_failed_are_final() -> None:
    assert [s for s in JobState if s.is_final] == [S, F]
    assert {"succeeded", "failed"} == FINAL_STATES and UNFINISHED_STATES == ("queued", "processing")
    assert "failed" in FINAL_STATES and "processing" not in FINAL_STATES  # plain stored strings too


@pytest.mark.parametrize(("current", "new"), [(Q, P), (Q, F), (P, P), (P, S), (P, F), (P, Q)])
def test_legal_transitions(current: JobState, new: JobState) -> None:
    assert can_transition(current, new)


@pytest.mark.parametrize(("current", "new"), [(Q, S), (Q, Q)])
def test_a_queued_scan_must_be_processed_before_it_succeeds(current: JobState, new: JobState) -> None:
    assert not can_transition(current, new)


@pytest.mark.parametrize("final", [S, F])
def test_nothing_leaves_a_final_state(final: JobState) -> None:
    assert not any(can_transition(final, new) for new in JobState)
