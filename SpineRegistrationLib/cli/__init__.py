"""The ``spinereg`` command: one file per subcommand, heavy imports inside ``run``.

Each subcommand module defines ``add_parser(subparsers)`` (returns its parser) and
``run(args) -> int``. Bad input raises :class:`~SpineRegistrationLib.errors.InputError`
(or an ``OSError`` naming a file), which ``main`` prints as one line on stderr with exit
status 2 — never a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__

#: Subcommand name -> module under SpineRegistrationLib.cli (imported only when listed/used).
COMMANDS = {
    "demo": "demo",
    "phantom": "phantom",
    "drr": "drr",
    "geometry": "geometry",
    "register": "register",
    "evaluate": "evaluate",
    "train": "train",
    "deform": "deform",
    "train-deform": "train_deform",
    "detect": "detect",
    "train-detect": "train_detect",
}


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: a usage error is one line
    ``spinereg: error: ...`` on stderr (naming the subcommand and pointing to its --help),
    exit status 2. Subparsers inherit the class."""

    def error(self, message: str):
        command = self.prog.removeprefix("spinereg").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"spinereg: error: {where}{_one_line(message)} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spinereg",
        description="Per-vertebra 2D/3D registration of a spine CT to AP/LAT X-rays.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"spinereg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..errors import InputError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version or a usage error: argparse has printed it
        return exit_.code if isinstance(exit_.code, int) else 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("spinereg: interrupted", file=sys.stderr)
        return 130
    except (InputError, OSError) as error:
        if args.debug:
            raise
        print(f"spinereg: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - the CLI promises no traceback; --debug shows it
        if args.debug:
            raise
        print(f"spinereg: internal error ({type(error).__name__}): {_one_line(error)} (rerun with --debug)", file=sys.stderr)
        return 1


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
