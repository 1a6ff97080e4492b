"""Vertebra names and label schemes (VerSe, TotalSegmentator v2 ``total``)."""

import pytest

from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.core.labels import (
    SCHEMES,
    VERTEBRAE,
    canonical_name,
    detect_scheme,
    get_scheme,
    guess_scheme_from_labels,
    sort_vertebrae,
    vertebra_label,
)


def test_vertebrae_ordered_cranial_to_caudal():
    assert VERTEBRAE[:2] == ("C1", "C2")
    assert VERTEBRAE[-1] == "S1"
    order = [VERTEBRAE.index(n) for n in ("C7", "T1", "T12", "T13", "L1", "L5", "L6", "S1")]
    assert order == sorted(order)
    assert len(VERTEBRAE) == 7 + 13 + 6 + 1
    assert sort_vertebrae(["L2", "T13", "C3", "S1", "L1"]) == ["C3", "T13", "L1", "L2", "S1"]


@pytest.mark.parametrize(
    "name, label",
    [("C1", 1), ("C7", 7), ("T1", 8), ("T12", 19), ("L1", 20), ("L5", 24), ("L6", 25), ("S1", 26), ("T13", 28)],
)
def test_verse_numbers(name, label):
    assert SCHEMES["verse"].label_of[name] == label
    assert SCHEMES["verse"].name_of[label] == name


@pytest.mark.parametrize(
    "name, label",
    [("S1", 26), ("L5", 27), ("L1", 31), ("T12", 32), ("T1", 43), ("C7", 44), ("C1", 50)],
)
def test_totalseg_numbers(name, label):
    assert SCHEMES["totalseg"].label_of[name] == label
    assert SCHEMES["totalseg"].name_of[label] == name


def test_schemes_are_bijective_and_totalseg_has_no_transitional_vertebrae():
    for scheme in SCHEMES.values():
        assert len(set(scheme.label_of.values())) == len(scheme.label_of)
        assert {scheme.label_of[n] for n in scheme.name_of.values()} == set(scheme.name_of)
    assert "T13" not in SCHEMES["totalseg"].label_of and "L6" not in SCHEMES["totalseg"].label_of
    assert len(SCHEMES["totalseg"].label_of) == 25


@pytest.mark.parametrize(
    "text, expected",
    [
        ("L1", "L1"),
        ("l1", "L1"),
        (" t12 ", "T12"),
        ("vertebrae_L1", "L1"),
        ("vertebrae_S1", "S1"),
        ("L1 vertebra", "L1"),
        ("C07", "C7"),
        ("Lumbar vertebra 1", "L1"),
        ("T13", "T13"),
        ("sacrum", None),
        ("Segment_1", None),
        ("L9", None),
        ("C8", None),
        ("T14", None),
        ("spinal_cord", None),
    ],
)
def test_canonical_name(text, expected):
    assert canonical_name(text) == expected


def test_vertebra_label_names_and_raw_integers():
    assert vertebra_label("L1", "verse") == 20
    assert vertebra_label("l1", "totalseg") == 31
    assert vertebra_label("vertebrae_T12", SCHEMES["totalseg"]) == 32
    assert vertebra_label("20", "totalseg") == 20  # raw integer passes through
    assert vertebra_label(99, "verse") == 99


def test_vertebra_label_errors():
    with pytest.raises(InputError, match="unknown vertebra 'X1'"):
        vertebra_label("X1", "verse")
    with pytest.raises(InputError, match="T13 has no label in the 'totalseg'"):
        vertebra_label("T13", "totalseg")
    with pytest.raises(InputError, match="positive"):
        vertebra_label("0", "verse")


def test_get_scheme():
    assert get_scheme("VerSe").name == "verse"
    assert get_scheme(SCHEMES["totalseg"]) is SCHEMES["totalseg"]
    with pytest.raises(InputError, match="unknown label scheme 'nnunet'; expected one of: verse, totalseg"):
        get_scheme("nnunet")


def test_detect_scheme_from_segment_names_and_values():
    assert detect_scheme(["vertebrae_L1", "vertebrae_L2", "sacrum"]).name == "totalseg"
    assert detect_scheme(["L1", "L2"]).name == "verse"
    assert detect_scheme(["L1 vertebra", "L2 vertebra"], [31, 30]).name == "totalseg"
    assert detect_scheme(["L1 vertebra", "L2 vertebra"], [20, 21]).name == "verse"
    assert detect_scheme(["L1", "L2"], [1, 1]).name == "verse"  # one segment per layer
    assert detect_scheme(["L1", "T13"]).name == "verse"


def test_guess_scheme_from_plain_labelmap_values():
    assert guess_scheme_from_labels([20, 21, 28]).name == "verse"
    assert guess_scheme_from_labels([26, 27, 31, 51]).name == "totalseg"
