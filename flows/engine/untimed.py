"""The time hooks of the strategies that know no time (see ``BatchStrategy``)."""

from __future__ import annotations

from flows.engine.session import Session
from flows.ports import TopicPartition

__all__ = ["Untimed"]


class Untimed:
    """The time hooks of strategies without time: nothing ever comes due."""

    timed = False

    def tick(self, session: Session) -> bool:
        return False

    def waits(self, session: Session) -> bool:
        return False

    def recovered(self, session: Session, partitions: list[TopicPartition]) -> None:
        pass
