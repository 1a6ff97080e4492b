"""Run a ``spinereg`` subcommand as a background process and follow its progress.

The SlicerMONAIAuto3DSeg pattern, without Qt: the command runs in its own process (so long
work never blocks Slicer's GUI and a crash in torch cannot take Slicer down), a reader
thread splits its output into lines and puts parsed :class:`ProgressEvent` objects on a
queue, the caller drains the queue whenever it likes (the module widget from a QTimer, a
test or a script in a loop), and :meth:`CliProcess.cancel` ends the whole process tree.

Standard library only (no slicer, qt or torch), so it works in Slicer, in PythonSlicer and
in plain Python. The command is ``<python> -m SpineRegistrationLib <subcommand> ...``: the
same entry point as the ``spinereg`` console script, but through an explicit interpreter, so
Slicer can run it with its own PythonSlicer (where the library is installed) without relying
on PATH.

Progress lines understood (everything else becomes a message-only event):

- ``[2/5] rendering ...``             step 2 of 5 started: fraction (2 - 1) / 5
- ``L1:  45%|####      | 9/20 [...]`` a tqdm bar (tqdm redraws with carriage returns, which
  are treated as line ends): fraction 0.45, message ``L1``
- ``progress 0.42 some text``         explicit fraction in [0, 1] (also ``PROGRESS``)
- ``spinereg: error: <reason>``       the CLI's one-line error: kept as :attr:`CliProcess.error`
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: Seconds a cancelled process gets to stop on its own (so the CLI can remove its staging
#: folder) before the whole process tree is killed.
CANCEL_GRACE_S = 5.0

_STEP = re.compile(r"^\s*\[(\d+)\s*/\s*(\d+)\]\s*(.*)$")
_TQDM = re.compile(r"^(?P<desc>.*?):?\s*(?P<pct>\d{1,3})%\|")
_FRACTION = re.compile(r"^\s*progress[:\s]+(?P<f>[0-9]*\.?[0-9]+)\s*(?P<msg>.*)$", re.IGNORECASE)
_ERROR = re.compile(r"^spinereg: (?:error|internal error[^:]*): ?(.*)$")


@dataclass(frozen=True)
class ProgressEvent:
    """One line of the command's output.

    fraction: overall progress in [0, 1] when the line says it, else None.
    message: the line's text (for a tqdm bar, its description).
    line: the raw line.
    """

    fraction: float | None
    message: str
    line: str


def parse_progress_line(line: str) -> ProgressEvent:
    """Turn one output line into a :class:`ProgressEvent` (see the module docstring)."""
    text = line.strip()
    match = _STEP.match(text)
    if match:
        step, steps = int(match.group(1)), int(match.group(2))
        fraction = min(max((step - 1) / steps, 0.0), 1.0) if steps > 0 else None
        return ProgressEvent(fraction, match.group(3).strip() or text, line)
    match = _TQDM.match(text)
    if match:
        return ProgressEvent(min(int(match.group("pct")) / 100.0, 1.0), match.group("desc").strip() or text, line)
    match = _FRACTION.match(text)
    if match:
        return ProgressEvent(min(max(float(match.group("f")), 0.0), 1.0), match.group("msg").strip() or text, line)
    return ProgressEvent(None, text, line)


def python_command(python: str | None = None) -> list[str]:
    """``[python, "-m", "SpineRegistrationLib"]``: how to start the CLI.

    python: the interpreter that has SpineRegistrationLib installed; default: this one
    (``sys.executable``). Inside Slicer pass :func:`find_python_slicer`: Slicer's
    ``sys.executable`` is the application itself.
    """
    return [python or sys.executable, "-m", "SpineRegistrationLib"]


def find_python_slicer(path: str | None = None) -> str:
    """The PythonSlicer interpreter on ``path`` (a PATH string; default: PATH), which runs the
    CLI inside Slicer. ValueError (one line) when there is none: there, ``sys.executable`` is
    the Slicer application itself, so it is no fallback."""
    found = shutil.which("PythonSlicer", path=path)
    if not found:
        raise ValueError("PythonSlicer (Slicer's Python, beside the Slicer executable) is not on PATH: "
                         "start Slicer through its launcher")
    return found


def library_environment(environment: dict[str, str]) -> dict[str, str]:
    """``environment`` with PYTHONPATH led by the folder of this interpreter's SpineRegistrationLib,
    so the command runs the same library (a built extension ships it beside the module, where
    PythonSlicer alone would not look)."""
    spec = importlib.util.find_spec("SpineRegistrationLib")
    if spec is None or spec.origin is None:
        return environment
    folder = str(Path(spec.origin).resolve().parent.parent)
    rest = [entry for entry in environment.get("PYTHONPATH", "").split(os.pathsep) if entry and entry != folder]
    return {**environment, "PYTHONPATH": os.pathsep.join([folder] + rest)}


class CliProcess:
    """One ``spinereg`` run in the background.

    Usage::

        run = CliProcess(["phantom", "--out", "X"]).start()
        while run.running:
            for event in run.poll():
                show(event.fraction, event.message)
            time.sleep(0.1)
        if run.returncode != 0:
            raise ValueError(run.error)

    args: the subcommand and its options (no program name).
    python: interpreter for :func:`python_command`.
    env: extra environment variables (merged over the current environment; PYTHONPATH then
    leads with the library's folder, :func:`library_environment`).
    program: the command ``args`` follow; default :func:`python_command` (``spinereg``).

    Progress: ``[i/n]`` step lines set the overall fraction; a tqdm bar inside step i of n
    moves it between (i - 1)/n and i/n, so per-vertebra bars make one monotone progress bar.
    """

    def __init__(
        self,
        args: list[str],
        python: str | None = None,
        env: dict[str, str] | None = None,
        program: list[str] | None = None,
    ) -> None:
        self.command = (list(program) if program else python_command(python)) + [str(a) for a in args]
        self._step: tuple[int, int] | None = None
        self._env = library_environment({**os.environ, **(env or {})})
        # The CLI must not colour or buffer its output: we read it line by line.
        self._env.setdefault("PYTHONUNBUFFERED", "1")
        self._env.setdefault("TQDM_MININTERVAL", "0.5")
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._events: queue.Queue[ProgressEvent] = queue.Queue()
        self.lines: list[str] = []
        self.error: str | None = None
        self.cancelled = False
        self.fraction = 0.0
        self.started_s: float | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> CliProcess:
        """Start the process and its reader thread; returns self."""
        if self._process is not None:
            raise RuntimeError("this CliProcess was already started")
        kwargs: dict = {}
        if os.name == "nt":
            # Own process group: cancel() can send CTRL_BREAK to it and kill the tree.
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            # Own session (and process group): cancel() signals every child it started.
            kwargs["start_new_session"] = True
        self.started_s = time.monotonic()
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._env,
            **kwargs,
        )
        self._reader = threading.Thread(target=self._read_output, name="spinereg-output", daemon=True)
        self._reader.start()
        return self

    def _read_output(self) -> None:
        """Reader thread: split the byte stream at \\n and \\r (tqdm redraws), parse, enqueue."""
        stream = self._process.stdout
        pending = b""
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(1)
            if not chunk:
                break
            pending += chunk
            parts = re.split(rb"[\r\n]", pending)
            pending = parts.pop()
            for part in parts:
                self._handle_line(part)
        if pending:
            self._handle_line(pending)
        stream.close()

    def _handle_line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip()
        if not line.strip():
            return
        self.lines.append(line)
        event = parse_progress_line(line)
        step = _STEP.match(line.strip())
        if step and int(step.group(2)) > 0:
            self._step = (int(step.group(1)), int(step.group(2)))
        elif event.fraction is not None and self._step is not None and _TQDM.match(line.strip()):
            index, count = self._step
            event = ProgressEvent(min((index - 1 + event.fraction) / count, 1.0), event.message, line)
        match = _ERROR.match(line.strip())
        if match:
            self.error = match.group(1).strip() or line.strip()
        self._events.put(event)

    @property
    def running(self) -> bool:
        """True while the process runs or its output is still being read."""
        if self._process is None:
            return False
        return self._process.poll() is None or bool(self._reader and self._reader.is_alive())

    @property
    def returncode(self) -> int | None:
        """The exit status once finished (negative: killed by that signal on POSIX), else None."""
        if self._process is None or self.running:
            return None
        return self._process.returncode

    @property
    def elapsed_s(self) -> float:
        return 0.0 if self.started_s is None else time.monotonic() - self.started_s

    def poll(self) -> list[ProgressEvent]:
        """Every event read since the last call (never blocks)."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            if event.fraction is not None:
                self.fraction = event.fraction
            events.append(event)
        return events

    def wait(self, timeout_s: float | None = None, callback=None, interval_s: float = 0.1) -> int:
        """Block until the process ends, calling ``callback(event)`` for every event.

        Raises TimeoutError (after cancelling the run) when ``timeout_s`` passes first.
        Returns the exit status.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.running:
            for event in self.poll():
                if callback:
                    callback(event)
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"{' '.join(self.command[2:4])} did not finish within {timeout_s:g} s")
            time.sleep(interval_s)
        for event in self.poll():
            if callback:
                callback(event)
        return self._process.returncode

    def cancel(self, grace_s: float = CANCEL_GRACE_S) -> None:
        """End the run and every process it started.

        First asks politely (SIGINT to the process group on POSIX, CTRL_BREAK on Windows:
        the CLI then removes its half-written output folder), waits up to ``grace_s``
        seconds, then kills the whole tree (SIGKILL to the group; ``taskkill /T /F``).
        Safe to call more than once or after the process ended.
        """
        process = self._process
        if process is None:
            return
        self.cancelled = True
        if process.poll() is None:
            self._signal_tree(graceful=True)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        # The group may hold children (e.g. torch workers) even after the CLI itself ended.
        self._signal_tree(graceful=False)
        try:
            process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel did not reap it
            pass
        if self._reader is not None:
            self._reader.join(timeout=5.0)
        self._remove_staging()

    def _remove_staging(self) -> None:
        """Delete the staging folders of this run's ``--out`` (``.<name>.partial-*`` beside it,
        see SpineRegistrationLib.io.atomic.staged_output_dir): a run killed before it could
        clean up must not leave them behind. The output folder itself is never touched."""
        if "--out" not in self.command[:-1]:
            return
        target = Path(self.command[self.command.index("--out") + 1]).absolute()
        for staging in target.parent.glob(f".{target.name}.partial-*"):
            shutil.rmtree(staging, ignore_errors=True)

    def _signal_tree(self, graceful: bool) -> None:
        process = self._process
        if os.name == "nt":
            if graceful:
                if process.poll() is None:
                    try:
                        process.send_signal(signal.CTRL_BREAK_EVENT)
                    except OSError:
                        pass
            else:
                subprocess.run(
                    ["taskkill", "/F", "/T", "/PID", str(process.pid)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
            return
        try:
            os.killpg(process.pid, signal.SIGINT if graceful else signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is already gone

    def failure_message(self) -> str:
        """One line saying why the run failed (the CLI's error line when it printed one)."""
        if self.cancelled:
            return "cancelled"
        if self.error:
            return self.error
        tail = next((line.strip() for line in reversed(self.lines) if line.strip()), "")
        code = self._process.returncode if self._process else None
        return f"spinereg exited with status {code}" + (f": {tail}" if tail else "")


def wait_or_cancel(run, timeout_s: float | None = None, callback=None) -> None:
    """Block until ``run.process`` (a started :class:`CliProcess`) ends, calling ``callback(event)``
    per progress event; on a timeout (TimeoutError) or any other exception ``run.cancel()`` is
    called (the run cleans up after itself) and the exception goes on."""
    try:
        run.process.wait(timeout_s=timeout_s, callback=callback)
    except BaseException:
        run.cancel()
        raise
