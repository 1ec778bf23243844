"""Instrument remapping: the --program, --track, --mute and --no-drums options of the command line.

- ``--program FROM=TO`` (repeatable): every non-drum track whose General MIDI program is FROM is played as TO.
- ``--track N=TO`` (repeatable): track N is played as program TO; it wins over ``--program``.
- ``--mute N`` (repeatable, or ``2,5``): track N is left out.
- ``--no-drums``: every drum track (MIDI channel 10) is left out.

Track numbers are 1-based, as ``spectrosynth inspect`` prints them (``Track.index + 1``). Programs are
General MIDI programs numbered from 0, as pretty_midi and ``spectrosynth inspect`` number them
(0 = Acoustic Grand Piano, 40 = Violin, 127 = Gunshot); 1-based numbers from printed GM charts are *not*
accepted, so subtract one. A program may also be given by name: a General MIDI instrument name or one of
the model's class names (a class name means its class program: "Synth Lead" is 80). Names are matched
ignoring case, spaces, hyphens, parentheses and other punctuation; an exact name wins, otherwise a name
part that only one program has ("clarinet", "tuba"), and a name part that several programs share
("piano", "guitar", "sax") is an error that lists them.

The model renders 34 instrument classes; a requested program that is not a class program is rendered as
its class (program 45, Pizzicato Strings, as class 43, Contrabass), and `apply_remap` says so in a notice.

`apply_remap` returns a new `Score` whose tracks are `RemappedTrack`s: `Track`s that also carry
`source_program` (the file's program) and `muted`. Muted tracks stay in `Score.tracks`, so track numbers
do not change, but their notes and sustain pedals are removed from the score.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from spectrosynth.errors import RemapError
from spectrosynth.instruments import MODEL_CLASSES, class_name, program_name, program_to_class
from spectrosynth.midi import Score, Track

_DOCS = "see docs/cli.md"
_EXAMPLES = {"--program": "--program 0=40 or --program 0=violin", "--track": "--track 2=40"}
_SHAPES = {"--program": "FROM=TO", "--track": "N=PROGRAM"}
_MAX_LISTED = 10  # candidates listed in an "ambiguous name" error
_NOT_PROGRAMS = {"drum", "drums", "drumkit", "drumset"}


# ---------------------------------------------------------------------------------------------------------
# Program names


def _normalise(name: str) -> str:
    """Lower case, letters and digits only ('&' reads as 'and'): 'Lead 1 (square)' -> 'lead1square'."""
    return re.sub(r"[^0-9a-z]", "", name.lower().replace("&", "and"))


@functools.cache
def _names() -> tuple[tuple[str, int, str], ...]:
    """(normalised name, program, name) for every GM program name and every model class name."""
    gm = [(_normalise(program_name(p)), p, program_name(p)) for p in range(128)]
    classes = [(_normalise(name), p, name) for p, name in MODEL_CLASSES.items()]
    return tuple(gm + classes)


def _label(program: int) -> str:
    return f"{program} {program_name(program)}"


def parse_program(text: str) -> int:
    """A General MIDI program (0..127) from a number or a name.

    Numbers are 0-based, as in pretty_midi and `spectrosynth inspect`. Names are GM instrument names or the
    model's class names, matched ignoring case, spaces and punctuation: an exact name wins, then a name part
    that only one program has ("clarinet" -> 71). Raises RemapError (one line) for a number outside 0..127,
    an unknown name (suggesting the closest one) or a name part shared by several programs (listing them).
    """
    raw = text.strip()
    if re.fullmatch(r"[+-]?\d+", raw):
        program = int(raw)
        if not 0 <= program <= 127:
            raise RemapError(
                f"program {program} is outside 0-127; General MIDI programs are numbered from 0 "
                f"(0 = {program_name(0)}, 127 = {program_name(127)}), as `spectrosynth inspect` shows them"
            )
        return program
    if re.fullmatch(r"[+-]?[\d.,]+", raw):
        raise RemapError(f"'{raw}' is not a program number; give a whole number 0-127 or a name ({_DOCS})")
    key = _normalise(raw)
    if not key:
        raise RemapError(f"no program given ('{raw}'); give a General MIDI number 0-127 or a name ({_DOCS})")
    if key in _NOT_PROGRAMS:
        raise RemapError(
            f"'{raw}' is not a General MIDI program: drums are the tracks on MIDI channel 10 and other "
            "tracks cannot become one; use --mute or --no-drums to leave drums out, or give a pitched program"
        )

    exact = sorted({p for norm, p, _ in _names() if norm == key})
    matches = exact or sorted({p for norm, p, _ in _names() if key in norm})
    if len(matches) == 1:
        return matches[0]
    if matches:
        listed = ", ".join(_label(p) for p in matches[:_MAX_LISTED])
        if len(matches) > _MAX_LISTED:
            listed += f", … ({len(matches) - _MAX_LISTED} more)"
        raise RemapError(
            f"'{raw}' matches {len(matches)} programs: {listed}; give the number or a longer name"
        )
    close = difflib.get_close_matches(key, [norm for norm, _, _ in _names()], n=1, cutoff=0.6)
    if close:
        _, program, name = next(entry for entry in _names() if entry[0] == close[0])
        raise RemapError(
            f"unknown program '{raw}'; did you mean '{name}' ({program})? "
            f"Give a General MIDI number 0-127 or a name ({_DOCS})"
        )
    raise RemapError(
        f"unknown program '{raw}'; give a General MIDI number 0-127 or a name such as 'Violin' ({_DOCS})"
    )


def parse_assignment(text: str, what: str) -> tuple[str, int]:
    """Split an option value "LEFT=PROGRAM" into (LEFT, program), parsing PROGRAM with `parse_program`.

    `what` names the option ("--program", "--track") in the one-line RemapError raised for a value without
    exactly one '=', an empty side or a bad program. LEFT is returned stripped and otherwise unparsed.
    """
    shape = _SHAPES.get(what, "LEFT=PROGRAM")
    example = _EXAMPLES.get(what, f"{what} 0=40")
    left, sep, right = text.partition("=")
    left, right = left.strip(), right.strip()
    if not sep or "=" in right or not left or not right:
        raise RemapError(f"{what} '{text}': expected {shape}, for example {example}")
    try:
        return left, parse_program(right)
    except RemapError as e:
        raise RemapError(f"{what} {text}: {e}") from None


def _parse_track_number(text: str, what: str, option: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", text.strip()):
        raise RemapError(
            f"{what} '{option}': '{text.strip()}' is not a track number; give the number "
            "`spectrosynth inspect` prints for the track (1, 2, …)"
        )
    number = int(text)
    if number < 1:
        raise RemapError(
            f"{what} '{option}': tracks are numbered from 1, as `spectrosynth inspect` prints them"
        )
    return number


# ---------------------------------------------------------------------------------------------------------
# The options


def _frozen_mapping(items: Mapping[int, int]) -> Mapping[int, int]:
    return MappingProxyType(dict(items))


@dataclass(frozen=True)
class Remap:
    """What the --program, --track, --mute and --no-drums options ask for; see the module docstring."""

    programs: Mapping[int, int] = field(default_factory=dict)  # GM program -> GM program, non-drum tracks
    tracks: Mapping[int, int] = field(default_factory=dict)  # 1-based track number -> GM program
    mute: frozenset[int] = frozenset()  # 1-based track numbers
    drop_drums: bool = False

    def __post_init__(self) -> None:
        for source, target in self.programs.items():
            if not (0 <= source <= 127 and 0 <= target <= 127):
                raise RemapError(f"--program {source}={target}: programs are numbered 0-127")
        for number, target in self.tracks.items():
            if number < 1 or not 0 <= target <= 127:
                raise RemapError(f"--track {number}={target}: tracks start at 1, programs are 0-127")
        if any(number < 1 for number in self.mute):
            raise RemapError(f"--mute {min(self.mute)}: tracks are numbered from 1")
        # Read-only copies: a frozen Remap cannot be changed through the mappings it was given.
        object.__setattr__(self, "programs", _frozen_mapping(self.programs))
        object.__setattr__(self, "tracks", _frozen_mapping(self.tracks))
        object.__setattr__(self, "mute", frozenset(self.mute))

    def __hash__(self) -> int:
        return hash(
            (frozenset(self.programs.items()), frozenset(self.tracks.items()), self.mute, self.drop_drums)
        )

    @classmethod
    def from_options(
        cls,
        programs: Sequence[str] = (),
        tracks: Sequence[str] = (),
        mute: Sequence[str | int] = (),
        drop_drums: bool = False,
    ) -> Remap:
        """Parse the raw option values: --program FROM=TO, --track N=TO, --mute N (or "2,5"), --no-drums.

        FROM and TO are programs as `parse_program` reads them. The same FROM or track given twice with
        different programs is an error; whether track numbers exist in a song is checked by `apply_remap`.
        """
        program_map: dict[int, int] = {}
        for text in programs:
            left, target = parse_assignment(text, "--program")
            try:
                source = parse_program(left)
            except RemapError as e:
                raise RemapError(f"--program {text}: {e}") from None
            _add(program_map, source, target, f"--program {source}", "FROM program")
        track_map: dict[int, int] = {}
        for text in tracks:
            left, target = parse_assignment(text, "--track")
            number = _parse_track_number(left, "--track", text)
            _add(track_map, number, target, f"--track {number}", "track")
        muted: set[int] = set()
        for value in mute:
            if isinstance(value, int) and not isinstance(value, bool):
                if value < 1:
                    raise RemapError(
                        f"--mute {value}: tracks are numbered from 1, as `spectrosynth inspect` prints them"
                    )
                muted.add(value)
                continue
            parts = [p for p in str(value).split(",") if p.strip()]
            if not parts:
                raise RemapError(
                    f"--mute '{value}': expected track numbers, for example --mute 2 or --mute 2,5"
                )
            muted.update(_parse_track_number(p, "--mute", str(value)) for p in parts)
        return cls(program_map, track_map, frozenset(muted), bool(drop_drums))

    def is_identity(self) -> bool:
        """True when no option was given: `apply_remap` would change nothing and have nothing to say."""
        return not (self.programs or self.tracks or self.mute or self.drop_drums)


def _add(mapping: dict[int, int], key: int, value: int, option: str, what: str) -> None:
    if mapping.get(key, value) != value:
        raise RemapError(
            f"{option} is given twice, as {mapping[key]} ({program_name(mapping[key])}) and "
            f"{value} ({program_name(value)}); give each {what} one program"
        )
    mapping[key] = value


# ---------------------------------------------------------------------------------------------------------
# Applying them


@dataclass
class RemappedTrack(Track):
    """A track of a remapped score: `program` is the program it is played as, and it also records

    `source_program`, the program in the MIDI file, and `muted`, whether it was left out (by --mute or
    --no-drums; its notes and pedals are then not in the score and `num_notes` is 0).
    """

    source_program: int | None = None
    muted: bool = False

    @property
    def remapped(self) -> bool:
        """Whether the track is played with another program than the file gives it."""
        return self.source_program is not None and self.program != self.source_program


def apply_remap(score: Score, remap: Remap) -> tuple[Score, list[str]]:
    """A new score played as `remap` asks, and one-line notices for the user (the CLI prints them on stderr).

    The input score is not modified. Every track of the result is a `RemappedTrack` with the same index:
    muted tracks keep their place but lose their notes and sustain pedals, remapped tracks and their notes
    get the new program, and `end_time` is that of the notes left. --track wins over --program, and
    --program never changes drum tracks. Raises RemapError for a --track or --mute number the song does not
    have, and for --track on a drum track. Notices tell which requested programs the model renders as
    another class, and which options had no effect.
    """
    source = score.source
    count = len(score.tracks)
    for number, target in sorted(remap.tracks.items()):
        _check_track_number(score, number, f"--track {number}={target}")
        if score.tracks[number - 1].is_drum:
            raise RemapError(
                f"{source}: --track {number}={target}: track {number} is a drum track (channel 10); drums "
                f"cannot be given a program — use --mute {number} or --no-drums"
            )
    for number in sorted(remap.mute):
        _check_track_number(score, number, f"--mute {number}")

    notices: list[str] = []
    muted = set(remap.mute)
    if remap.drop_drums:
        drums = {t.index + 1 for t in score.tracks if t.is_drum}
        if not drums:
            notices.append("--no-drums: the song has no drum track")
        muted |= drums

    # The program each track is played as.
    targets: dict[int, int] = {}  # 1-based track number -> program
    for t in score.tracks:
        number = t.index + 1
        if number in muted or t.is_drum:
            continue
        if number in remap.tracks:
            targets[number] = remap.tracks[number]
        elif t.program in remap.programs:
            targets[number] = remap.programs[t.program]

    for source_program, target in sorted(remap.programs.items()):
        option = f"--program {source_program}={target}"
        playing = [t.index + 1 for t in score.tracks if not t.is_drum and t.program == source_program]
        if not playing:
            notice = f"{option}: no track plays program {source_program} ({program_name(source_program)})"
            others = sorted({t.program for t in score.tracks if not t.is_drum})
            if any(t.is_drum and t.program == source_program for t in score.tracks):
                notice += "; --program does not change drum tracks"
            elif others:
                notice += f"; its tracks play programs {', '.join(map(str, others))}"
            elif not count:
                notice += "; the song has no tracks"
            notices.append(notice)
        elif all(n in muted or n in remap.tracks for n in playing):
            if len(playing) == 1:
                which = f"track {playing[0]}, the only track playing program {source_program}, is"
            else:
                which = f"tracks {_numbers(playing)}, all the tracks playing program {source_program}, are"
            notices.append(f"{option}: no effect: {which} muted or set with --track")
    for number, target in sorted(remap.tracks.items()):
        if number in muted:
            notices.append(f"--track {number}={target}: track {number} is muted, so this has no effect")

    by_target: dict[int, list[int]] = {}
    for number, target in sorted(targets.items()):
        if target not in MODEL_CLASSES:
            by_target.setdefault(target, []).append(number)
    for target, numbers in sorted(by_target.items(), key=lambda item: item[1][0]):
        cls = program_to_class(target)
        notices.append(
            f"{'track' if len(numbers) == 1 else 'tracks'} {_numbers(numbers)}: program {target} "
            f"({program_name(target)}) is rendered as {class_name(target)} (class {cls}): "
            f"the model knows {len(MODEL_CLASSES)} instrument classes"
        )

    kept_indices = {t.index for t in score.tracks if t.index + 1 not in muted}
    new_program = {number - 1: target for number, target in targets.items()}
    notes = [
        replace(n, program=new_program.get(n.track, n.program))
        for n in score.notes
        if n.track in kept_indices
    ]
    pedals = [p for p in score.pedals if p.track in kept_indices]
    tracks = [
        RemappedTrack(
            index=t.index,
            name=t.name,
            program=new_program.get(t.index, t.program),
            is_drum=t.is_drum,
            channel=t.channel,
            midi_track=t.midi_track,
            num_notes=t.num_notes if t.index in kept_indices else 0,
            source_program=_source_program(t),
            muted=t.index not in kept_indices or bool(getattr(t, "muted", False)),
        )
        for t in score.tracks
    ]
    end_time = max((n.end for n in notes), default=0.0) if len(notes) != len(score.notes) else score.end_time
    if end_time < score.end_time - 0.005:
        notices.append(
            f"the song now ends at {end_time:.2f} s instead of {score.end_time:.2f} s: "
            "the tracks left out played last"
        )
    return replace(score, tracks=tracks, notes=notes, pedals=pedals, end_time=end_time), notices


def _source_program(track: Track) -> int:
    """The program in the MIDI file, also when the score was remapped before."""
    earlier = getattr(track, "source_program", None)
    return track.program if earlier is None else earlier


def _check_track_number(score: Score, number: int, option: str) -> None:
    count = len(score.tracks)
    if not 1 <= number <= count:
        has = {0: "no tracks", 1: "only 1 track"}.get(count, f"{count} tracks, numbered 1-{count}")
        raise RemapError(
            f"{score.source}: {option}: the song has {has}; "
            f"see them with `spectrosynth inspect {score.source}`"
        )


def _numbers(numbers: Iterable[int]) -> str:
    return ", ".join(str(n) for n in numbers)
