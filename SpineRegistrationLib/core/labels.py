"""Vertebra names and the label schemes that number them.

Names are canonical strings ``C1``..``C7``, ``T1``..``T12``, ``T13``, ``L1``..``L5``,
``L6``, ``S1`` (cranial -> caudal; T13 and L6 are the transitional vertebrae some
patients have). A label scheme maps those names to the integer values of a labelmap:

- ``verse``: the VerSe dataset (anjany/verse README): 1-7 C1-C7, 8-19 T1-T12,
  20-25 L1-L6, 26 sacrum (used here for S1), 27 coccyx (not a vertebra we register,
  left out), 28 T13.
- ``totalseg``: TotalSegmentator v2 task ``total`` (its ``class_map``): 26
  ``vertebrae_S1``, 27 L5 ... 31 L1, 32 T12 ... 43 T1, 44 C7 ... 50 C1. It has no T13
  or L6; label 25 is the whole ``sacrum``, a separate structure, not S1.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import InputError

#: Every vertebra name the library knows, cranial -> caudal.
VERTEBRAE: tuple[str, ...] = (
    *(f"C{i}" for i in range(1, 8)),
    *(f"T{i}" for i in range(1, 14)),
    *(f"L{i}" for i in range(1, 7)),
    "S1",
)

_REGION_LETTER = {"cervical": "C", "thoracic": "T", "lumbar": "L", "sacral": "S"}
# "L1", "l1", "vertebrae_L1", "vertebra L1", "L1 vertebra", "L1_vertebra"
_SHORT_NAME = re.compile(r"^(?:vertebra[e]?[ _]?)?([ctls])(\d{1,2})(?:[ _]?vertebra[e]?)?$")
# "Lumbar vertebra 1", "thoracic vertebrae 12"
_LONG_NAME = re.compile(r"^(cervical|thoracic|lumbar|sacral)[ _]vertebra[e]?[ _](\d{1,2})$")


@dataclass(frozen=True, eq=False)
class LabelScheme:
    """A mapping between vertebra names and labelmap integers.

    name: the scheme's name (``verse``, ``totalseg``).
    label_of: canonical vertebra name -> label value.
    name_of: label value -> canonical vertebra name (the inverse of ``label_of``).
    segment_prefix: how the scheme's own tools name a segment (``vertebrae_`` for
    TotalSegmentator), used when writing ``.seg.nrrd`` files.
    """

    name: str
    label_of: Mapping[str, int]
    segment_prefix: str = ""
    name_of: Mapping[int, str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name_of", {label: name for name, label in self.label_of.items()})

    def segment_name(self, name: str) -> str:
        """Canonical name -> the segment name this scheme's tools use (``vertebrae_L1``)."""
        return self.segment_prefix + name


def _verse_labels() -> dict[str, int]:
    labels = {f"C{i}": i for i in range(1, 8)}
    labels |= {f"T{i}": 7 + i for i in range(1, 13)}
    labels |= {f"L{i}": 19 + i for i in range(1, 7)}
    labels |= {"S1": 26, "T13": 28}
    return labels


def _totalseg_labels() -> dict[str, int]:
    labels = {"S1": 26}
    labels |= {f"L{i}": 32 - i for i in range(1, 6)}
    labels |= {f"T{i}": 44 - i for i in range(1, 13)}
    labels |= {f"C{i}": 51 - i for i in range(1, 8)}
    return labels


SCHEMES: dict[str, LabelScheme] = {
    "verse": LabelScheme("verse", _verse_labels()),
    "totalseg": LabelScheme("totalseg", _totalseg_labels(), segment_prefix="vertebrae_"),
}

#: Highest VerSe label; a plain labelmap with larger values is taken as TotalSegmentator.
_VERSE_MAX_LABEL = max(SCHEMES["verse"].label_of.values())


#: Other names users type for a scheme -> its name.
SCHEME_ALIASES = {"totalsegmentator": "totalseg"}
#: Every name ``--label-scheme`` accepts (``auto``: from segment names or label values).
SCHEME_CHOICES = ("auto", "verse", "totalsegmentator", "totalseg")


def get_scheme(scheme: str | LabelScheme) -> LabelScheme:
    """A scheme by name or alias (case-insensitive); a LabelScheme passes through."""
    if isinstance(scheme, LabelScheme):
        return scheme
    key = str(scheme).strip().lower()
    key = SCHEME_ALIASES.get(key, key)
    if key not in SCHEMES:
        names = ", ".join(name for name in SCHEME_CHOICES if name != "auto")
        raise InputError(f"unknown label scheme {scheme!r}; expected one of: {names} (or auto)")
    return SCHEMES[key]


def canonical_name(text: str) -> str | None:
    """Vertebra name in any common spelling -> canonical name, or None if not a vertebra.

    Accepts ``L1``, ``l1``, ``vertebrae_L1`` (TotalSegmentator), ``L1 vertebra``,
    ``Lumbar vertebra 1``. Returns None for other text (``sacrum``, ``Segment_1``, ``L9``).
    """
    key = str(text).strip().lower()
    match = _SHORT_NAME.match(key)
    if match:
        name = match.group(1).upper() + str(int(match.group(2)))
    else:
        match = _LONG_NAME.match(key)
        if not match:
            return None
        name = _REGION_LETTER[match.group(1)] + str(int(match.group(2)))
    return name if name in VERTEBRAE else None


def vertebra_label(name_or_label: str | int, scheme: str | LabelScheme) -> int:
    """A vertebra name (any spelling ``canonical_name`` accepts) or a raw integer -> label value.

    A raw integer (``20`` or ``"20"``) is returned as is, so labelmaps numbered in other
    schemes stay usable. Raises InputError for a name that is not a vertebra or that
    the scheme does not number (``T13`` in ``totalseg``).
    """
    scheme = get_scheme(scheme)
    if isinstance(name_or_label, int) or str(name_or_label).strip().isdigit():
        label = int(name_or_label)
        if label <= 0:
            raise InputError(f"vertebra label {name_or_label!r} must be a positive integer")
        return label
    name = canonical_name(name_or_label)
    if name is None:
        raise InputError(
            f"unknown vertebra {name_or_label!r}; expected a name like L1 or T12 "
            f"({VERTEBRAE[0]}..{VERTEBRAE[-1]}) or an integer label"
        )
    if name not in scheme.label_of:
        raise InputError(f"vertebra {name} has no label in the {scheme.name!r} scheme")
    return scheme.label_of[name]


def sort_vertebrae(names: Iterable[str]) -> list[str]:
    """Canonical names sorted cranial -> caudal."""
    return sorted(names, key=VERTEBRAE.index)


def detect_scheme(segment_names: Iterable[str], label_values: Iterable[int] | None = None) -> LabelScheme:
    """The scheme a segmentation's segment names (and optionally their label values) follow.

    - Names that spell the TotalSegmentator way (``vertebrae_L1``) -> ``totalseg``.
    - Otherwise, with ``label_values`` (parallel to ``segment_names``), the scheme whose
      numbering matches every vertebra segment's value, if any.
    - Otherwise ``verse`` (it numbers every vertebra name, T13 and L6 included).
    """
    names = list(segment_names)
    pairs = [(canonical_name(n), v) for n, v in zip(names, label_values or [None] * len(names))]
    vertebra_pairs = [(n, v) for n, v in pairs if n is not None]
    canonical = {n for n, _ in vertebra_pairs}
    totalseg = SCHEMES["totalseg"]
    totalseg_spelling = any(n.strip().lower().startswith(totalseg.segment_prefix) for n in names)
    if totalseg_spelling and canonical <= set(totalseg.label_of):
        return totalseg
    if label_values is not None and vertebra_pairs:
        for scheme in SCHEMES.values():
            if all(scheme.label_of.get(n) == int(v) for n, v in vertebra_pairs):
                return scheme
    return SCHEMES["verse"]


def guess_scheme_from_labels(label_values: Iterable[int]) -> LabelScheme:
    """The scheme of a plain labelmap from the values it holds (no names to go by).

    Any value above VerSe's largest (28) means TotalSegmentator (its ``total`` task
    numbers L3..C1 and organs above 28); otherwise VerSe. Pass the scheme explicitly
    when a labelmap could be either.
    """
    values = [int(v) for v in label_values]
    return SCHEMES["totalseg"] if any(v > _VERSE_MAX_LABEL for v in values) else SCHEMES["verse"]
