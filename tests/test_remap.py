import copy

import pytest

from spectrosynth.errors import RemapError, SpectrosynthError
from spectrosynth.instruments import MODEL_CLASSES
from spectrosynth.midi import Track, read_midi
from spectrosynth.remap import Remap, RemappedTrack, apply_remap, parse_assignment, parse_program
from spectrosynth.tokens import tokenize

DRUM_TOKENS = range(1263, 1391)
PROGRAM_TOKEN = 1135  # + program


def _tokens(score) -> list[int]:
    return [t for segment in tokenize(score) for t in segment.tokens]


def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text and isinstance(error.value, SpectrosynthError)
    return text


# --- parse_program ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,program",
    [
        ("0", 0),
        (" 40 ", 40),
        ("127", 127),
        ("Violin", 40),  # exact GM name
        ("violin", 40),
        ("VIOLIN", 40),
        ("Acoustic Grand Piano", 0),
        ("acoustic-grand piano", 0),
        ("honky tonk piano", 3),  # hyphen ignored
        ("Electric Guitar (clean)", 27),  # parentheses ignored
        ("electric guitar clean", 27),
        ("Lead 1 (square)", 80),
        ("alto sax", 65),
        ("viola", 41),
        ("flute", 73),  # exact 'Flute' wins over 'Pan Flute'
        ("clarinet", 71),  # unique part of a name
        ("tuba", 58),
        ("square", 80),
        ("Synth Lead", 80),  # model class names mean their class program
        ("synth pad", 88),
        ("Choir and Voice", 52),
        ("choir & voice", 52),
        ("Soprano/Alto Sax", 64),
        ("electric piano", 4),
        ("organ", 16),
        ("Orchestral Hit", 55),
    ],
)
def test_parse_program_numbers_and_names(text, program):
    assert parse_program(text) == program


def test_every_gm_and_class_name_parses_to_its_program():
    import pretty_midi

    for program, name in enumerate(pretty_midi.constants.INSTRUMENT_MAP):
        assert parse_program(name) == program
        assert parse_program(name.upper().replace(" ", "-")) == program
    for program, name in MODEL_CLASSES.items():
        assert parse_program(name) == program


@pytest.mark.parametrize(
    "text,count,listed",
    [
        ("piano", 6, ["0 Acoustic Grand Piano", "1 Bright Acoustic Piano", "5 Electric Piano 2"]),
        ("guitar", 9, ["24 Acoustic Guitar (nylon)", "31 Guitar Harmonics"]),
        ("sax", 4, ["64 Soprano Sax", "65 Alto Sax", "66 Tenor Sax", "67 Baritone Sax"]),
        ("horn", 2, ["60 French Horn", "69 English Horn"]),
    ],
)
def test_ambiguous_names_list_the_candidates(text, count, listed):
    with pytest.raises(RemapError) as info:
        parse_program(text)
    message = _one_line(info)
    assert message.startswith(f"'{text}' matches {count} programs: ")
    assert all(item in message for item in listed)
    assert message.endswith("give the number or a longer name")


def test_long_candidate_lists_are_cut():
    with pytest.raises(RemapError, match=r"'e' matches \d+ programs: .*… \(\d+ more\)") as info:
        parse_program("e")
    _one_line(info)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(RemapError) as info:
        parse_program("vilin")
    message = _one_line(info)
    assert message.startswith("unknown program 'vilin'")
    assert "'Violin' (40)" in message and "0-127" in message and "docs/cli.md" in message


def test_unknown_name_without_a_close_one():
    with pytest.raises(RemapError) as info:
        parse_program("xyzzy")
    assert _one_line(info) == (
        "unknown program 'xyzzy'; give a General MIDI number 0-127 or a name such as 'Violin' "
        "(see docs/cli.md)"
    )


@pytest.mark.parametrize("text", ["128", "-1", "1000"])
def test_numbers_outside_the_gm_range(text):
    with pytest.raises(RemapError) as info:
        parse_program(text)
    message = _one_line(info)
    assert f"program {int(text)} is outside 0-127" in message
    assert "numbered from 0" in message  # programs are 0-based, as in pretty_midi and `inspect`


@pytest.mark.parametrize(
    "text,match", [("40.5", "not a program number"), ("", "no program given"), ("()", "no")]
)
def test_not_a_program(text, match):
    with pytest.raises(RemapError, match=match) as info:
        parse_program(text)
    _one_line(info)


def test_drums_are_not_a_program():
    with pytest.raises(RemapError, match="channel 10") as info:
        parse_program("Drums")
    _one_line(info)


# --- parse_assignment and Remap.from_options ----------------------------------------------------------------


def test_parse_assignment():
    assert parse_assignment("0=40", "--program") == ("0", 40)
    assert parse_assignment(" piano = Violin ", "--program") == ("piano", 40)
    assert parse_assignment("3=clarinet", "--track") == ("3", 71)


@pytest.mark.parametrize("text", ["040", "0=", "=40", "0=40=41", ""])
def test_parse_assignment_needs_one_equals_sign_and_two_sides(text):
    with pytest.raises(RemapError, match=r"^--track .*expected N=PROGRAM, for example --track 2=40") as info:
        parse_assignment(text, "--track")
    _one_line(info)


def test_parse_assignment_names_the_option_in_program_errors():
    with pytest.raises(RemapError, match=r"^--program 0=vilin: unknown program 'vilin'"):
        parse_assignment("0=vilin", "--program")
    with pytest.raises(RemapError, match=r"^--track 2=piano: 'piano' matches 6 programs"):
        parse_assignment("2=piano", "--track")


def test_from_options_parses_every_option():
    remap = Remap.from_options(
        programs=["0=40", "Electric Bass (finger)=cello"], tracks=["2=tuba", "7=0"], mute=["2,5", "9", 11]
    )
    assert dict(remap.programs) == {0: 40, 33: 42}
    assert dict(remap.tracks) == {2: 58, 7: 0}
    assert remap.mute == frozenset({2, 5, 9, 11})
    assert remap.drop_drums is False
    assert Remap.from_options(drop_drums=True).drop_drums is True


@pytest.mark.parametrize(
    "value,expected", [("2,5", {2, 5}), (" 2 , 5 ", {2, 5}), ("3", {3}), ("2,5,", {2, 5})]
)
def test_mute_accepts_comma_separated_track_numbers(value, expected):
    assert Remap.from_options(mute=[value]).mute == frozenset(expected)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"programs": ["0"]}, "expected FROM=TO"),
        ({"programs": ["piano=40"]}, r"^--program piano=40: 'piano' matches"),
        ({"programs": ["0=40", "0=41"]}, "given twice"),
        ({"tracks": ["two=40"]}, "not a track number"),
        ({"tracks": ["0=40"]}, "numbered from 1"),
        ({"tracks": ["2=40", "2=41"]}, "given twice"),
        ({"mute": ["0"]}, "numbered from 1"),
        ({"mute": [0]}, "numbered from 1"),
        ({"mute": ["2;5"]}, "not a track number"),
        ({"mute": [","]}, "expected track numbers"),
    ],
)
def test_from_options_errors(options, match):
    with pytest.raises(RemapError, match=match) as info:
        Remap.from_options(**options)
    _one_line(info)


def test_repeating_an_option_with_the_same_value_is_fine():
    assert dict(Remap.from_options(programs=["0=40", "0=violin"]).programs) == {0: 40}


def test_is_identity():
    assert Remap().is_identity() and Remap.from_options().is_identity()
    assert not Remap.from_options(programs=["0=40"]).is_identity()
    assert not Remap.from_options(tracks=["1=40"]).is_identity()
    assert not Remap.from_options(mute=["1"]).is_identity()
    assert not Remap(drop_drums=True).is_identity()


def test_remap_is_immutable_and_hashable():
    programs = {0: 40}
    remap = Remap(programs=programs)
    programs[1] = 41  # the caller's dict is copied
    assert dict(remap.programs) == {0: 40}
    with pytest.raises(TypeError):
        remap.programs[2] = 42  # type: ignore[index]
    assert remap == Remap(programs={0: 40}) and hash(remap) == hash(Remap(programs={0: 40}))
    with pytest.raises(RemapError):
        Remap(programs={0: 128})


# --- apply_remap --------------------------------------------------------------------------------------------


@pytest.fixture
def complex_score(complex_midi):
    return read_midi(complex_midi)


@pytest.fixture
def waltz_score(waltz):
    return read_midi(waltz)


def test_program_remap_changes_exactly_the_matching_non_drum_tracks(complex_score):
    # Tracks 9, 10 and 17 play program 29 (Overdriven Guitar); track 4 is the drum track (program 0).
    out, notices = apply_remap(complex_score, Remap.from_options(programs=["29=40", "0=41"]))
    changed = {t.index + 1 for t in complex_score.tracks if not t.is_drum and t.program == 29}
    assert changed == {9, 10, 17}
    for before, after in zip(complex_score.tracks, out.tracks, strict=True):
        assert isinstance(after, RemappedTrack) and after.index == before.index
        assert after.source_program == before.program and not after.muted
        assert after.program == (40 if after.index + 1 in changed else before.program)
        assert after.remapped == (after.index + 1 in changed)
    assert len(out.notes) == len(complex_score.notes)
    for before, after in zip(complex_score.notes, out.notes, strict=True):
        expected = 40 if before.track + 1 in changed else before.program
        assert after.program == expected and after.pitch == before.pitch and after.start == before.start
    assert out.tracks[3].is_drum and out.tracks[3].program == 0  # --program never touches drums
    assert notices == [
        "--program 0=41: no track plays program 0 (Acoustic Grand Piano); "
        "--program does not change drum tracks"
    ]


def test_track_remap_wins_over_program_remap(complex_score):
    remap = Remap.from_options(programs=["29=40"], tracks=["10=cello"])
    out, _ = apply_remap(complex_score, remap)
    assert [out.tracks[i - 1].program for i in (9, 10, 17)] == [40, 42, 40]
    assert {n.program for n in out.notes if n.track == 9} == {42}
    assert {n.program for n in out.notes if n.track == 8} == {40}


def test_program_remap_turns_the_waltz_into_violins_in_the_tokens(waltz_score):
    before = _tokens(waltz_score)
    out, notices = apply_remap(waltz_score, Remap.from_options(programs=["0=40"]))
    after = _tokens(out)
    assert notices == []  # 40 is a model class
    assert PROGRAM_TOKEN + 0 in before and PROGRAM_TOKEN + 40 not in before
    assert PROGRAM_TOKEN + 0 not in after and PROGRAM_TOKEN + 40 in after
    assert after == [PROGRAM_TOKEN + 40 if t == PROGRAM_TOKEN else t for t in before]


def test_mute_removes_the_tracks_notes_and_keeps_track_numbers(complex_score):
    out, notices = apply_remap(complex_score, Remap.from_options(mute=["2,5"]))
    assert len(out.tracks) == 18 and [t.index for t in out.tracks] == list(range(18))
    assert [t.index + 1 for t in out.tracks if t.muted] == [2, 5]
    assert out.tracks[1].num_notes == 0 and out.tracks[4].num_notes == 0
    assert not any(n.track in (1, 4) for n in out.notes)
    kept = [n for n in complex_score.notes if n.track not in (1, 4)]
    assert out.notes == kept
    assert sum(t.num_notes for t in out.tracks) == len(out.notes)
    assert notices == []


def test_muting_the_last_track_shortens_the_song(waltz_score):
    out, notices = apply_remap(waltz_score, Remap.from_options(mute=["2"]))
    assert out.end_time == max(n.end for n in out.notes) < waltz_score.end_time
    assert any(n.startswith("the song now ends at") for n in notices)


def test_no_drums_removes_drum_notes_and_drum_tokens(complex_score):
    assert any(t in DRUM_TOKENS for t in _tokens(complex_score))
    out, notices = apply_remap(complex_score, Remap(drop_drums=True))
    assert not any(n.is_drum for n in out.notes)
    assert [t.index + 1 for t in out.tracks if t.muted] == [4]
    assert out.tracks[3].is_drum and out.tracks[3].num_notes == 0
    assert len(out.notes) == len(complex_score.notes) - complex_score.tracks[3].num_notes
    assert not any(t in DRUM_TOKENS for t in _tokens(out))
    assert notices == []


def test_no_drums_on_a_song_without_drums_says_so(waltz_score):
    out, notices = apply_remap(waltz_score, Remap(drop_drums=True))
    assert out.notes == waltz_score.notes
    assert notices == ["--no-drums: the song has no drum track"]


def test_muting_a_drum_track_by_number_also_removes_drum_tokens(complex_score):
    out, _ = apply_remap(complex_score, Remap.from_options(mute=["4"]))
    assert not any(t in DRUM_TOKENS for t in _tokens(out))


def test_pedals_of_muted_tracks_are_removed(waltz_score):
    from spectrosynth.midi import Pedal

    score = copy.deepcopy(waltz_score)
    score.pedals = [Pedal(1.0, 127, 0), Pedal(2.0, 0, 0), Pedal(1.5, 127, 1)]
    out, _ = apply_remap(score, Remap.from_options(mute=["1"]))
    assert out.pedals == [Pedal(1.5, 127, 1)]


def test_input_score_is_not_modified(complex_score):
    original = copy.deepcopy(complex_score)
    remap = Remap.from_options(programs=["29=45"], tracks=["1=40"], mute=["2"], drop_drums=True)
    out, _ = apply_remap(complex_score, remap)
    assert complex_score == original
    assert all(type(t) is Track for t in complex_score.tracks)
    assert out is not complex_score and out.notes is not complex_score.notes
    out.notes[0].program = 99  # the result shares no mutable notes with the input
    assert complex_score.notes[0].program == original.notes[0].program


def test_identity_remap_gives_an_equal_song(complex_score):
    out, notices = apply_remap(complex_score, Remap())
    assert notices == []
    assert out.notes == complex_score.notes and out.end_time == complex_score.end_time
    assert _tokens(out) == _tokens(complex_score)


def test_remapping_a_remapped_score_keeps_the_files_program(waltz_score):
    once, _ = apply_remap(waltz_score, Remap.from_options(programs=["0=40"]))
    twice, _ = apply_remap(once, Remap.from_options(tracks=["1=42"]))
    assert [(t.program, t.source_program) for t in twice.tracks] == [(42, 0), (40, 0)]


# --- notices ------------------------------------------------------------------------------------------------


def test_notice_for_a_target_that_is_not_a_model_class(complex_score):
    _, notices = apply_remap(complex_score, Remap.from_options(tracks=["2=Pizzicato Strings"]))
    assert notices == [
        "track 2: program 45 (Pizzicato Strings) is rendered as Contrabass (class 43): "
        "the model knows 34 instrument classes"
    ]


def test_class_notices_are_grouped_by_program(complex_score):
    remap = Remap.from_options(programs=["29=45"], tracks=["1=19"])
    _, notices = apply_remap(complex_score, remap)
    assert notices == [
        "track 1: program 19 (Church Organ) is rendered as Organ (class 16): "
        "the model knows 34 instrument classes",
        "tracks 9, 10, 17: program 45 (Pizzicato Strings) is rendered as Contrabass (class 43): "
        "the model knows 34 instrument classes",
    ]


def test_notice_for_a_program_no_track_plays(complex_score):
    out, notices = apply_remap(complex_score, Remap.from_options(programs=["34=40", "33=40"]))
    assert notices == [
        "--program 34=40: no track plays program 34 (Electric Bass (pick)); its tracks play programs "
        "5, 25, 28, 29, 30, 31, 33, 50, 54, 65, 66, 84, 85, 87, 100"
    ]
    assert out.tracks[7].program == 40  # track 8 plays 33


def test_notice_when_every_matching_track_is_overridden(complex_score):
    remap = Remap.from_options(programs=["29=40", "85=41"], tracks=["9=0", "10=0"], mute=["17", "1"])
    out, notices = apply_remap(complex_score, remap)
    assert notices == [
        "--program 29=40: no effect: tracks 9, 10, 17, all the tracks playing program 29, are muted or set "
        "with --track",
        "--program 85=41: no effect: track 1, the only track playing program 85, "
        "is muted or set with --track",
    ]
    assert [out.tracks[i - 1].program for i in (9, 10, 17)] == [0, 0, 29]


def test_notice_for_a_track_program_on_a_muted_track(waltz_score):
    out, notices = apply_remap(waltz_score, Remap.from_options(tracks=["1=40"], mute=["1"]))
    assert "--track 1=40: track 1 is muted, so this has no effect" in notices
    assert out.tracks[0].muted and out.tracks[0].program == 0


def test_notices_are_one_line_strings(complex_score):
    remap = Remap.from_options(programs=["29=45", "33=1"], tracks=["1=19"], mute=["2", "3"], drop_drums=True)
    _, notices = apply_remap(complex_score, remap)
    assert notices and all(isinstance(n, str) and "\n" not in n for n in notices)


# --- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,option",
    [
        ({"tracks": ["19=40"]}, "--track 19=40"),
        ({"mute": ["19"]}, "--mute 19"),
        ({"mute": ["2,30"]}, "--mute 30"),
    ],
)
def test_track_numbers_outside_the_song(complex_score, options, option):
    with pytest.raises(RemapError) as info:
        apply_remap(complex_score, Remap.from_options(**options))
    message = _one_line(info)
    assert message.startswith(f"{complex_score.source}: {option}: the song has 18 tracks, numbered 1-18")
    assert f"spectrosynth inspect {complex_score.source}" in message


def test_a_drum_track_cannot_be_given_a_program(complex_score):
    with pytest.raises(RemapError) as info:
        apply_remap(complex_score, Remap.from_options(tracks=["4=40"]))
    assert _one_line(info) == (
        f"{complex_score.source}: --track 4=40: track 4 is a drum track (channel 10); "
        "drums cannot be given a program — use --mute 4 or --no-drums"
    )
