import pytest

from spectrosynth import codec as C
from spectrosynth.constants import INPUT_LENGTH, SEGMENT_SECONDS
from spectrosynth.midi import Note, read_midi
from spectrosynth.tokens import fit_segment, num_segments, pad, tokenize, tokenize_notes

PROGRAM = C.PROGRAM_BASE + 3
PITCH = C.PITCH_BASE + 3
VELOCITY = C.VELOCITY_BASE + 3


def _n(pitch, start, end, program=0, drum=False, velocity=90):
    return Note(pitch=pitch, velocity=velocity, start=start, end=end, program=program, track=0, is_drum=drum)


def test_spec_example_tie_section_then_events():
    # spec §4: C4 held 0-6 s, a program-40 note at 5.20-5.30 s, a drum at 5.5 s.
    notes = [_n(60, 0.0, 6.0), _n(40, 5.20, 5.30, program=40), _n(36, 5.5, 5.6, drum=True)]
    seg1 = tokenize_notes(notes, 6.0)[1]
    assert seg1[:7] == [PROGRAM + 0, PITCH + 60, C.TIE + 3, 8 + 3, PROGRAM + 40, VELOCITY + 1, PITCH + 40]
    assert seg1[-1] == C.EOS_ID


def test_first_segment_of_a_single_note():
    seg0 = tokenize_notes([_n(60, 0.5, 1.0)], 1.0)[0]
    tie, shift = C.TIE + 3, lambda s: s + 3
    on = [PROGRAM + 0, VELOCITY + 1, PITCH + 60]
    off = [VELOCITY + 0, PITCH + 60]  # program 0 is still current: dropped
    assert seg0 == [tie, shift(50), *on, shift(100), *off, C.EOS_ID]


def test_empty_song_is_one_segment_with_a_lone_tie():
    assert tokenize_notes([], 0.0) == [[C.TIE + 3, C.EOS_ID]]


@pytest.mark.parametrize(
    "seconds,segments", [(0.0, 1), (5.1, 1), (5.119, 1), (5.12, 2), (10.0, 2), (60.0, 12)]
)
def test_segment_count_follows_the_reference_frame_grid(seconds, segments):
    # 5.12 s is exactly 256 frames, and the reference always adds 1-320 samples: a 257th frame.
    assert num_segments(seconds) == segments


def test_fit_keeps_short_segments_untouched():
    tokens = [C.TIE + 3, 50, PROGRAM, VELOCITY + 1, PITCH + 60, C.EOS_ID]
    seg = fit_segment(2, tokens)
    assert seg.tokens == tokens and seg.dropped_tokens == 0 and seg.dropped_from is None
    assert seg.start == pytest.approx(2 * SEGMENT_SECONDS)


def test_fit_cuts_long_segments_on_an_event_boundary_and_says_when():
    tokens = [C.TIE + 3]
    for step in range(1, 800):  # 800 onsets at 10 ms apart: 1 + 4 * 799 tokens
        tokens += [step + 3, PROGRAM, VELOCITY + 1, PITCH + 60 + step % 20]
    tokens.append(C.EOS_ID)
    seg = fit_segment(1, tokens)
    assert len(seg.tokens) <= INPUT_LENGTH and seg.tokens[-1] == C.EOS_ID
    assert C.PITCH_BASE + 3 <= seg.tokens[-2] <= C.PITCH_BASE + 3 + 127  # a whole event last
    assert seg.tokens[:-1] == tokens[: len(seg.tokens) - 1]  # the earliest events are kept
    assert seg.dropped_tokens == len(tokens) - len(seg.tokens)
    kept_steps = [t - 3 for t in seg.tokens if 3 <= t <= 1003]
    assert seg.dropped_from == pytest.approx(SEGMENT_SECONDS + kept_steps[-1] / 100)


def test_tokenize_bounds_every_segment(complex_midi):
    segments = tokenize(read_midi(complex_midi), max_length=300)
    assert len(segments) == 58
    assert all(len(s.tokens) <= 300 for s in segments)
    assert any(s.dropped_tokens for s in segments)


def test_pad():
    assert pad([5, 1], 4) == [5, 1, 0, 0]
