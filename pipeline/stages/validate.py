"""Validate: decode stream entries and apply the stateless event checks once more.

The gateway runs the same checks (`schemas/event_checks.py`) before it accepts an event, so a
producer learns of a bad figure from a 422. They run here again because entries also reach the
streams by other paths: a DLQ replay, a gateway of an older release during a rolling upgrade.
An event that fails becomes a dead letter with the reason (the field and what is wrong) and
its original bytes; the rest of its entry goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec

from pipeline.runner import DeadLetter, Delivery
from schemas.event_checks import Problem, checked_properties
from schemas.events import StreamEvent, stream_event_decoder

__all__ = ["ValidEvent", "validate"]

STAGE: Final = "validate"


@dataclass(frozen=True, slots=True)
class ValidEvent:
    event: StreamEvent
    properties: dict[str, Any]


def validate(batch: list[Delivery]) -> tuple[list[ValidEvent], list[DeadLetter]]:
    valid: list[ValidEvent] = []
    dead: list[DeadLetter] = []
    for d in batch:
        for _, payload in d.fields:
            try:
                event = stream_event_decoder.decode(payload)
            except msgspec.DecodeError as e:
                dead.append(DeadLetter(d, f"undecodable event: {e}", STAGE, payload))
                continue
            props = checked_properties(event.type, event.value, event.properties)
            if isinstance(props, Problem):
                reason = f"{props.field}: {props.message}"
                dead.append(DeadLetter(d, reason, STAGE, payload))
            else:
                valid.append(ValidEvent(event, props))
    return valid, dead
