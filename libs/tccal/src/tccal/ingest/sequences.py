"""The sequence numbers of one mailbox's changes: strictly rising and never reused, across crashes.

Before a change would get a sequence above the stored ceiling, the ceiling is raised (in blocks of SEQUENCE_BLOCK)
and saved first; after a crash the next sequence starts above the old ceiling, because a crash may have used
sequences up to it without saving them. A service's checkpoint dataclass derives from `SequencedCheckpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

SEQUENCE_BLOCK = 1000


@dataclass
class SequencedCheckpoint:
    provider: str
    mailbox: str
    last_sequence: int = 0
    sequence_ceiling: int = 0

    def reserve(self, count: int) -> bool:
        """Make room for `count` more sequences; True when the ceiling moved (save before publishing)."""
        if self.last_sequence + count <= self.sequence_ceiling:
            return False
        self.sequence_ceiling = max(self.sequence_ceiling, self.last_sequence) + max(count, SEQUENCE_BLOCK)
        return True

    def next_sequence(self) -> int:
        if self.last_sequence + 1 > self.sequence_ceiling:
            raise RuntimeError(f"sequence ceiling {self.sequence_ceiling} of {self.mailbox} not reserved")
        self.last_sequence += 1
        return self.last_sequence

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        known = set(cls.__dataclass_fields__)
        checkpoint = cls(**{k: v for k, v in data.items() if k in known})
        # A crash may have used sequences up to the ceiling without saving them: never reuse one.
        checkpoint.last_sequence = max(checkpoint.last_sequence, checkpoint.sequence_ceiling)
        return checkpoint
