"""The event vocabulary the notes encoder reads (MT3's codec with "notes + ties", one velocity bin).

Raw event indices start at 0 with the shift range first; model token ids add the 3 special ids:

====================  ==========  =============  ==================
event                 values      raw index      model token id
====================  ==========  =============  ==================
shift (10 ms steps)   0..1000     0..1000        3..1003
pitch                 0..127      1001..1128     1004..1131
velocity (0 = off)    0..1        1129..1130     1132..1133
tie                   0           1131           1134
program               0..127      1132..1259     1135..1262
drum (pitch)          0..127      1260..1387     1263..1390
====================  ==========  =============  ==================

Special ids: 0 = PAD, 1 = EOS, 2 = UNK. The embedding table has 1536 rows (1391 ids used).
"""

from __future__ import annotations

from dataclasses import dataclass

from spectrosynth.constants import MAX_SHIFT_STEPS

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
NUM_SPECIAL_TOKENS = 3
VOCAB_SIZE = 1536  # 1391 used ids + 100 extra ids, rounded up to a multiple of 128


@dataclass(frozen=True)
class EventRange:
    """One event type and its inclusive value range."""

    type: str
    min_value: int
    max_value: int

    @property
    def size(self) -> int:
        return self.max_value - self.min_value + 1


@dataclass(frozen=True)
class Event:
    type: str
    value: int


class Codec:
    """Maps events to raw indices and back. Shifts always come first and start at index 0."""

    def __init__(self, max_shift_steps: int, event_ranges: list[EventRange]):
        self.ranges = (EventRange("shift", 0, max_shift_steps), *event_ranges)
        if len({r.type for r in self.ranges}) != len(self.ranges):
            raise ValueError("event types must be unique")
        self._offsets: dict[str, tuple[int, EventRange]] = {}
        offset = 0
        for r in self.ranges:
            self._offsets[r.type] = (offset, r)
            offset += r.size
        self.num_classes = offset

    def encode(self, type: str, value: int) -> int:
        """Raw index of an event; raises ValueError for an unknown type or an out-of-range value."""
        try:
            offset, r = self._offsets[type]
        except KeyError:
            raise ValueError(f"unknown event type {type!r}") from None
        if not r.min_value <= value <= r.max_value:
            raise ValueError(f"{type} value {value} outside [{r.min_value}, {r.max_value}]")
        return offset + value - r.min_value

    def range_of(self, type: str) -> tuple[int, int]:
        """Inclusive [first, last] raw index of an event type."""
        offset, r = self._offsets[type]
        return offset, offset + r.size - 1

    def decode(self, index: int) -> Event:
        for r in self.ranges:
            offset, _ = self._offsets[r.type]
            if offset <= index < offset + r.size:
                return Event(r.type, r.min_value + index - offset)
        raise ValueError(f"raw index {index} outside the codec (0..{self.num_classes - 1})")


CODEC = Codec(
    MAX_SHIFT_STEPS,
    [
        EventRange("pitch", 0, 127),
        EventRange("velocity", 0, 1),
        EventRange("tie", 0, 0),
        EventRange("program", 0, 127),
        EventRange("drum", 0, 127),
    ],
)
assert CODEC.num_classes + NUM_SPECIAL_TOKENS == 1391

# Raw index bases of the event types used on the hot path of the tokenizer.
SHIFT_BASE = CODEC.encode("shift", 0)
PITCH_BASE = CODEC.encode("pitch", 0)
VELOCITY_BASE = CODEC.encode("velocity", 0)
TIE = CODEC.encode("tie", 0)
PROGRAM_BASE = CODEC.encode("program", 0)
DRUM_BASE = CODEC.encode("drum", 0)


def token_to_event(token_id: int) -> Event:
    """Decode a model token id (raw index + 3); specials decode as PAD/EOS/UNK events."""
    if token_id < NUM_SPECIAL_TOKENS:
        return Event(("pad", "eos", "unk")[token_id], 0)
    return CODEC.decode(token_id - NUM_SPECIAL_TOKENS)
