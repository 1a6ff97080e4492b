"""Option groups that several subcommands share: the CT and its vertebrae (``register``,
``evaluate``), the output folder (``register``, ``evaluate``, ``deform``) and resuming an
interrupted run (``register``, ``evaluate``).

The training commands' shared options are in :mod:`.training_options`.
"""

from __future__ import annotations

import argparse

from ..core.labels import SCHEME_CHOICES


def add_ct_options(parser: argparse.ArgumentParser, title: str, *, optional: bool, label_help: str,
                   vertebra_help: str) -> argparse._ArgumentGroup:
    """The group ``title``: --ct, --seg, --label-scheme and --vertebra (repeatable). --ct and --seg
    are required, or with ``optional`` go together (their help says so)."""
    suppress = argparse.SUPPRESS
    group = parser.add_argument_group(title)
    group.add_argument("--ct", required=not optional, metavar="CT", default=suppress,
                       help="CT volume in HU (NIfTI, NRRD, MHA or a DICOM series folder)"
                       + ("; with --seg" if optional else ""))
    group.add_argument("--seg", required=not optional, metavar="SEG", default=suppress,
                       help="vertebra labelmap on the CT's voxel grid, or a Slicer .seg.nrrd"
                       + ("; with --ct" if optional else ""))
    group.add_argument("--label-scheme", default="auto", choices=SCHEME_CHOICES, help=label_help)
    group.add_argument("--vertebra", action="append", metavar="NAME", default=suppress, help=vertebra_help)
    return group


def add_output_folder(group: argparse._ActionsContainer) -> None:
    """--out DIR (required: a folder that appears only once complete) and --overwrite, into ``group``."""
    group.add_argument("--out", required=True, metavar="DIR", default=argparse.SUPPRESS,
                       help="output folder (created; must be new or empty unless --overwrite)")
    group.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder (only once complete)")


def add_resume(group: argparse._ActionsContainer, command: str, units: str) -> None:
    """--resume into ``group``: an interrupted ``command`` keeps its finished ``units`` in a journal
    (:mod:`..io.journal`)."""
    group.add_argument("--resume", action="store_true",
                       help=f"continue an interrupted run of the same command: the {units} it finished (kept in "
                       f".DIR.{command}-journal.json beside DIR) are taken, not computed again; refused if an input "
                       "file's contents or a setting changed")


def interrupted(journal, units: str) -> int:
    """Say what an interrupted run kept in ``journal`` (a :class:`..io.journal.RunJournal`) and how to go
    on; the exit status 130 (Ctrl-C)."""
    import sys

    print(f"spinereg: interrupted with {len(journal.done)} {units} done, kept in {journal.path}: the same command "
          "with --resume continues", file=sys.stderr)
    return 130
