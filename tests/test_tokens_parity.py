"""Token parity with the reference tokenizer, diffusers' `MidiProcessor` (note-seq + MT3's codec).

For a MIDI file, the reference's segments with their PAD tokens removed must equal ours (unpadded, EOS
last): on every real file in tests/data/midi, on generated edge cases, and on random songs (hypothesis).
The reference is a test-only dependency; it is imported on first use because it pulls in torch.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from midi_builder import SUSTAIN, Control, Note, Raw, Song, Track, pedal

from spectrosynth.constants import HOP_LENGTH, INPUT_LENGTH, SAMPLE_RATE
from spectrosynth.midi import read_midi
from spectrosynth.tokens import model_notes, tokenize_notes

pytestmark = pytest.mark.reference

MIDI_DIR = Path(__file__).parent / "data" / "midi"
REAL_FILES = sorted(MIDI_DIR.rglob("*.mid"))
DRUMS = 9  # 0-based MIDI channel 10
TIE_ONLY = [1134, 1]  # tie token, EOS


@functools.cache
def _processor():
    from diffusers import MidiProcessor

    return MidiProcessor()


def reference_tokens(midi: bytes) -> list[list[int]]:
    return [[t for t in segment if t] for segment in _processor()(midi)]


def our_tokens(midi: bytes) -> list[list[int]]:
    return tokenize_notes(*model_notes(read_midi(midi)))


def assert_parity(midi: bytes) -> list[list[int]]:
    """Assert parity; return the (shared) segments for further checks."""
    ours, ref = our_tokens(midi), reference_tokens(midi)
    assert len(ours) == len(ref), f"{len(ours)} segments, reference {len(ref)}"
    for j, (a, b) in enumerate(zip(ours, ref, strict=True)):
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            raise AssertionError(
                f"segment {j} differs at token {at} (lengths {len(a)} vs reference {len(b)}): "
                f"ours {a[max(0, at - 5) : at + 5]} reference {b[max(0, at - 5) : at + 5]}"
            )
    return ours


# --- real files --------------------------------------------------------------------------------------------


def test_real_files_are_there():
    assert len(REAL_FILES) == 34


# pretty_midi warns (in the reference's parse) about tempo events outside track 0 in some of these files.
@pytest.mark.filterwarnings("ignore:Tempo, Key or Time signature:RuntimeWarning")
@pytest.mark.parametrize("path", REAL_FILES, ids=[str(p.relative_to(MIDI_DIR)) for p in REAL_FILES])
def test_real_file(path):
    assert_parity(path.read_bytes())


# --- generated edge cases ----------------------------------------------------------------------------------


def _drum_track(end: float, step: float = 0.25) -> Track:
    hits = [Note(36 if i % 2 == 0 else 38, i * step, i * step + 0.1) for i in range(int(end / step))]
    return Track(hits, channel=DRUMS, name="drums")


def _seconds_on_a_grid(first: float, last: float, step: float) -> list[float]:
    return [round(first + i * step, 3) for i in range(int(round((last - first) / step)) + 1)]


CASES: dict[str, Song] = {
    # Segments are 5.12 s: notes that sound across one boundary and across several get tie sections.
    "crosses_one_boundary": Song(
        [
            Track([Note(60, 4.0, 6.0), Note(64, 4.5, 5.5), Note(67, 6.0, 7.0)]),
            Track([Note(48, 5.0, 5.3)], program=33),
        ]
    ),
    "crosses_several_boundaries": Song(
        [
            Track([Note(60, 1.0, 17.0), Note(62, 3.0, 11.0)]),
            Track([Note(55, 2.0, 16.0), Note(43, 9.0, 9.5)], program=41),
            Track([Note(72, 0.5, 21.0)], program=90),
            _drum_track(18.0, step=1.0),
        ]
    ),
    # Events exactly on the 5.12 s and 10.24 s boundaries, and 5 ms either side of them.
    "on_a_boundary": Song(
        [
            Track([Note(60, 5.12, 6.0), Note(62, 0.0, 5.12), Note(64, 10.24, 11.0), Note(65, 9.0, 10.24)]),
            Track([Note(70, 5.115, 5.125), Note(71, 10.235, 10.245), Note(72, 5.125, 10.235)], program=56),
            Track([Note(38, 5.12, 5.2), Note(36, 10.24, 10.3)], channel=DRUMS),
        ]
    ),
    "sustain_notes_released_under_the_pedal": Song(
        [
            Track(
                [Note(60, 0.0, 0.5), Note(64, 0.2, 0.6), Note(67, 1.0, 1.2), Note(72, 6.0, 6.5)],
                controls=[*pedal(0.3, 3.0), *pedal(5.5, 8.0)],
            )
        ]
    ),
    "sustain_same_pitch_restruck_under_the_pedal": Song(
        [
            Track(
                [Note(60, 0.0, 0.5), Note(60, 1.0, 1.5), Note(60, 2.0, 2.2), Note(64, 1.0, 4.5)],
                controls=pedal(0.1, 4.0),
                # Two onsets of one pitch at one tick under the pedal: the first becomes zero-length, removed.
                raw=[Raw(2.5, "note_on", 67), Raw(2.5, "note_on", 67), Raw(2.8, "note_off", 67)],
            )
        ]
    ),
    "sustain_pedal_never_released": Song(
        [
            Track([Note(60, 0.0, 1.0), Note(64, 2.0, 3.0)], controls=pedal(0.5)),
            Track([Note(48, 0.0, 8.0)], program=32),  # ends after the pedalled notes
        ]
    ),
    "sustain_pedal_on_a_drum_track": Song(
        [
            Track(
                [Note(36, 0.0, 0.1), Note(38, 0.5, 0.6), Note(36, 1.0, 1.1)],
                channel=DRUMS,
                controls=pedal(0.0),
            ),
            Track([Note(60, 0.0, 0.4)], controls=pedal(0.2, 2.0)),
        ]
    ),
    "sustain_pedal_on_one_track_only": Song(
        [
            Track([Note(60, 0.0, 1.0)], controls=pedal(0.5, 6.0), name="pedalled"),
            Track([Note(64, 0.0, 1.0)], name="same channel and program, other MTrk"),
            Track([Note(67, 0.0, 1.0)], channel=1, controls=pedal(0.5, 3.0), mtrk=7),
            Track([Note(71, 0.0, 1.0)], channel=2, mtrk=7),  # same MTrk, other channel
        ]
    ),
    # CC64 values 64..127 are "down", 0..63 "up".
    "sustain_pedal_threshold_values": Song(
        [
            Track(
                [Note(60, 0.0, 0.5), Note(62, 1.0, 1.5), Note(64, 2.0, 2.5)],
                controls=[Control(0.2, SUSTAIN, 64), Control(0.8, SUSTAIN, 63), Control(1.2, SUSTAIN, 100)]
                + [Control(1.4, SUSTAIN, 1), Control(2.1, SUSTAIN, 127), Control(3.0, SUSTAIN, 0)],
            )
        ]
    ),
    # At one time note-seq takes pedal down, then pedal up, then note-ons, then note-offs, whatever the file
    # order: a down and an up at one tick leave the pedal up; a note released as the pedal goes down rings.
    "sustain_pedal_events_at_one_time": Song(
        [
            Track(
                [Note(60, 0.0, 1.0), Note(62, 1.5, 2.0), Note(64, 2.5, 3.0), Note(65, 3.5, 4.0)],
                controls=[Control(1.0, SUSTAIN, 127), Control(1.8, SUSTAIN, 0), Control(1.8, SUSTAIN, 127)]
                + [Control(3.0, SUSTAIN, 0), Control(3.0, SUSTAIN, 127), Control(3.5, SUSTAIN, 0)]
                + [Control(5.0, SUSTAIN, 127), Control(6.0, SUSTAIN, 0)],
            ),
            Track([Note(67, 0.0, 9.0)], program=48),
        ]
    ),
    "drums_on_channel_10": Song(
        [
            _drum_track(12.0),
            Track([Note(42, i * 0.125, i * 0.125 + 0.05) for i in range(96)], channel=DRUMS, program=25),
            Track(
                [Note(49, 0.0, 6.0), Note(49, 3.0, 4.0)], channel=DRUMS, mtrk=0
            ),  # overlapping, held over 5.12
            Track([Note(60, 0.0, 12.0)]),
        ]
    ),
    "overlapping_notes_of_one_pitch": Song(
        [
            Track(
                [Note(60, 0.0, 2.0), Note(60, 1.0, 3.0), Note(62, 6.0, 7.0), Note(62, 7.0, 8.0)],
                raw=[Raw(4.0, "note_on", 64), Raw(4.5, "note_on", 64), Raw(5.0, "note_off", 64)]
                + [Raw(5.5, "note_off", 64)],
            ),
            # Programs 0 and 3 are one model class: one pitch from both is one (pitch, program) state.
            Track([Note(72, 4.0, 12.0)], program=0, channel=1),
            Track([Note(72, 5.0, 6.0)], program=3, channel=2),
        ]
    ),
    # pretty_midi (both sides parse with it) drops a note-on closed at its own tick: such notes vanish.
    # Notes shorter than 10 ms have onset and offset on one step, where offsets sort first: they stay "on".
    "zero_length_notes": Song(
        [
            Track(
                [Note(60, 0.5, 1.5), Note(62, 1.0, 1.004), Note(64, 2.0, 2.005)],
                raw=[Raw(1.0, "note_on", 67), Raw(1.0, "note_off", 67), Raw(2.0, "note_off", 67)]
                + [Raw(3.0, "note_on", 69), Raw(3.0, "note_off", 69)],
            ),
            Track([Note(48, 0.0, 0.0), Note(50, 3.0, 4.0)], program=33),  # Note(48) is written off, then on
        ]
    ),
    "tempo_and_time_signature_changes": Song(
        [
            Track([Note(60 + i % 12, t, t + 0.3) for i, t in enumerate(_seconds_on_a_grid(0.0, 14.0, 0.35))]),
            Track([Note(40, 0.0, 7.7), Note(43, 7.7, 14.0)], program=33),
        ],
        tempos=[(0.0, 120.0), (3.0, 90.0), (7.5, 200.0), (11.0, 61.3)],
        time_signatures=[(0.0, 4, 4), (4.0, 3, 4), (9.0, 7, 8)],
        ticks_per_beat=96,
    ),
    "tempo_changes_in_ticks": Song(
        [Track([Note(60 + i % 5, i * 240, i * 240 + 200) for i in range(40)], program=24)],
        tempos=[(0, 100.0), (2400, 140.0), (4800, 75.0)],
        time_signatures=[(0, 6, 8), (3600, 2, 4)],
        ticks_per_beat=480,
        unit="ticks",
    ),
    "all_128_programs_and_drums": Song(
        [
            Track(
                [Note(36 + p % 48, 0.0, 6.0), Note(40 + p % 40, 1.0 + p * 0.03, 2.0 + p * 0.03)],
                program=p,
                channel=[c for c in range(16) if c != DRUMS][p % 15],
            )
            for p in range(128)
        ]
        + [_drum_track(8.0)]
    ),
    "longer_than_10_minutes": Song(
        [
            Track([Note(60 + (i % 7), i * 5.0, i * 5.0 + 3.0) for i in range(124)], name="piano"),
            Track([Note(36 + (i % 5), i * 10.0, i * 10.0 + 9.9) for i in range(62)], program=33, name="bass"),
            _drum_track(620.0, step=2.5),
        ]
    ),
    "long_silences": Song([Track([Note(60, 0.0, 1.0), Note(62, 12.0, 13.0), Note(64, 40.0, 41.0)])]),
    "note_held_over_long_silences": Song(
        [
            Track([Note(60, 0.0, 1.0), Note(62, 12.0, 13.0), Note(64, 40.0, 41.0)]),
            Track([Note(48, 0.5, 40.5)]),
        ]
    ),
}


@pytest.mark.parametrize("song", CASES.values(), ids=CASES.keys())
def test_edge_case(song):
    assert_parity(song.to_bytes())


def test_song_ending_on_a_multiple_of_320_samples():
    # The reference pads the samples with 320 - N % 320 zeros: a whole extra frame when N % 320 == 0 (it
    # adds a segment only when the frames also fill whole segments: see the next test).
    song = Song([Track([Note(60, 0.0, 2.0), Note(64, 3.0, 6.0)])])
    duration = read_midi(song.to_bytes()).end_time
    assert int(duration * SAMPLE_RATE) % HOP_LENGTH == 0
    assert_parity(song.to_bytes())


def test_song_ending_exactly_on_a_segment_boundary_has_an_extra_segment():
    # 5.12 s is 81920 samples = 256 frames exactly; the extra frame opens a second segment (tie section only).
    song = Song([Track([Note(60, 0.0, 5.12)])])
    segments = assert_parity(song.to_bytes())
    assert len(segments) == 2


def test_dense_segment_longer_than_the_model_input():
    # A note every 10 ms: each step has an offset and an onset. The reference returns such a segment longer
    # than its 2048 positions (its padding is then a no-op); the raw tokens must still agree.
    notes = [Note(40 + k % 41, k * 0.01, (k + 1) * 0.01) for k in range(520)]
    song = Song(
        [Track(notes), Track([Note(70 + k % 7, k * 0.02, k * 0.02 + 0.01) for k in range(256)], program=40)]
    )
    segments = assert_parity(song.to_bytes())
    assert len(segments[0]) > INPUT_LENGTH


# --- empty songs -------------------------------------------------------------------------------------------

EMPTY = {
    "track_without_notes": Song([Track(name="silent", controls=pedal(0.0, 1.0))]),
    "tempo_track_only": Song([]),
}


@pytest.mark.parametrize("song", EMPTY.values(), ids=EMPTY.keys())
def test_empty_song(song):
    # With no events the reference has no state snapshot to find its tie token in and fails with an
    # IndexError (in extract_sequence_with_indices). Ours gives one segment holding a lone tie token, which is
    # what an empty snapshot encodes to.
    with pytest.raises(IndexError):
        _processor()(song.to_bytes())
    assert our_tokens(song.to_bytes()) == [TIE_ONLY]


# --- random songs ------------------------------------------------------------------------------------------


@st.composite
def songs(draw) -> Song:
    """Small multi-track songs in ticks. Most times fall on an eighth-note grid, so that onsets, offsets and
    pedal changes often coincide; a few pitches and programs (0, 1 and 3 share a model class) are favoured
    so that notes overlap and share a (pitch, program) state."""
    ticks_per_beat = draw(st.sampled_from([96, 220, 480, 500, 960]))
    eighth = ticks_per_beat // 2
    time = st.one_of(st.integers(0, 32).map(lambda i: i * eighth), st.integers(0, 32 * eighth))
    length = st.one_of(st.sampled_from([0, 1, eighth, 2 * eighth, 24 * eighth]), st.integers(1, 16 * eighth))
    pitch = st.one_of(st.integers(60, 64), st.integers(0, 127))
    program = st.one_of(st.sampled_from([0, 1, 3, 33, 40]), st.integers(0, 127))
    channel = st.one_of(st.sampled_from([0, 1, DRUMS]), st.integers(0, 15))

    tracks = []
    for _ in range(draw(st.integers(1, 4))):
        starts = draw(st.lists(time, min_size=1, max_size=12))
        notes = [Note(draw(pitch), t, t + draw(length), draw(st.integers(1, 127))) for t in starts]
        pedal_times = draw(
            st.lists(st.one_of(time, st.integers(0, 16).map(lambda i: i * 2 * eighth)), max_size=6)
        )
        controls = [Control(t, SUSTAIN, draw(st.sampled_from([0, 63, 64, 127]))) for t in pedal_times]
        mtrk = draw(st.sampled_from([None, None, 0]))  # some tracks share one MTrk chunk
        tracks.append(Track(notes, draw(program), draw(channel), controls=controls, mtrk=mtrk))
    tempos = [(0, draw(st.floats(30.0, 300.0)))]
    if draw(st.booleans()):
        tempos.append((draw(time), draw(st.floats(30.0, 300.0))))
    return Song(tracks, tempos=tempos, ticks_per_beat=ticks_per_beat, unit="ticks")


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(songs())
def test_random_songs(song):
    midi = song.to_bytes()
    if not read_midi(midi).notes:
        with pytest.raises(IndexError):  # see test_empty_song
            _processor()(midi)
        assert our_tokens(midi) == [TIE_ONLY]
        return
    assert_parity(midi)
