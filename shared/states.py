"""Job states: the one place that knows them and which transitions are legal."""

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED)


# For queries and membership tests ("state in ..."), derived from `is_final`, never spelled out.
FINAL_STATES: frozenset[JobState] = frozenset(s for s in JobState if s.is_final)
UNFINISHED_STATES: tuple[JobState, ...] = tuple(s for s in JobState if not s.is_final)

# A retried task may move processing -> processing again; nothing leaves a final state.
_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.PROCESSING, JobState.FAILED}),
    JobState.PROCESSING: frozenset({JobState.PROCESSING, JobState.SUCCEEDED, JobState.FAILED, JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
}


def can_transition(current: JobState, new: JobState) -> bool:
    return new in _ALLOWED[current]
