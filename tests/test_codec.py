import pytest

from spectrosynth import codec as C


def test_layout_matches_the_published_vocabulary():
    # Model token ids = raw index + 3 (spec §4).
    assert [C.CODEC.range_of(t) for t in ("shift", "pitch", "velocity", "tie", "program", "drum")] == [
        (0, 1000), (1001, 1128), (1129, 1130), (1131, 1131), (1132, 1259), (1260, 1387),
    ]  # fmt: skip
    assert C.CODEC.num_classes == 1388
    assert C.TIE + C.NUM_SPECIAL_TOKENS == 1134


@pytest.mark.parametrize("type_,value", [("shift", 0), ("shift", 1000), ("pitch", 60), ("velocity", 1),
                                         ("tie", 0), ("program", 127), ("drum", 36)])  # fmt: skip
def test_encode_decode_round_trip(type_, value):
    index = C.CODEC.encode(type_, value)
    assert C.CODEC.decode(index) == C.Event(type_, value)
    assert C.token_to_event(index + 3) == C.Event(type_, value)


def test_out_of_range_and_unknown_are_rejected():
    with pytest.raises(ValueError, match="outside"):
        C.CODEC.encode("pitch", 128)
    with pytest.raises(ValueError, match="unknown"):
        C.CODEC.encode("cowbell", 1)
    with pytest.raises(ValueError):
        C.CODEC.decode(1388)


def test_specials_decode():
    assert [C.token_to_event(i).type for i in range(3)] == ["pad", "eos", "unk"]
