"""Running a job body with SageMaker's failure conventions.

Exit 0 = Completed. Anything else = Failed, with the reason in output/failure
(first 1024 chars become FailureReason) and, for processing jobs, in
output/message (ExitMessage). User errors print one clear line, no traceback.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("flan_t5_detox")

EXIT_BAD_INPUT = 2
EXIT_ERROR = 1


class JobInputError(ValueError):
    """A problem with what the job was given (settings, channels, data).

    Its message is written to the failure file and shown to the user as is, after `prefix`;
    the job exits with EXIT_BAD_INPUT. Kinds whose fix is also the user's, such as a machine
    too small for the settings (`contract.disk`, `contract.memory`), are subclasses with their
    own prefix.
    """

    prefix = "Bad input"


def write_failure(path: Path, message: str) -> None:
    """Write the reason a job failed where SageMaker reads it (first 1024 chars shown)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(message if message.endswith("\n") else message + "\n")


class _CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at emit time, so a job run in-process (the demo, tests)
    never leaves a handler bound to a stream that has since been closed or swapped."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


JOB_HANDLER_NAME = "flan_t5_detox.job"


# `kill -USR1 PID` makes a job's process print every thread's Python stack to its log (stderr)
# and go on: what a job that hangs is waiting on, without stopping it.
DUMP_STACKS = signal.SIGUSR1


def setup_logging() -> None:
    """The job's log on stdout, SageMaker's log stream; stacks dumped on `DUMP_STACKS`."""
    faulthandler.register(DUMP_STACKS, file=sys.__stderr__, all_threads=True)
    handler = _CurrentStdoutHandler()
    handler.set_name(JOB_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for noisy in ("transformers", "datasets", "accelerate", "trl", "peft"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def run_job(body: Callable[[], int], failure_files: list[Path]) -> int:
    try:
        return body()
    except JobInputError as exc:
        message = f"{exc.prefix}: {exc}"
        code = EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - anything else is reported, then the job fails
        message = f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc(limit=8)}"
        code = EXIT_ERROR
    for path in failure_files:
        try:
            write_failure(path, message)
        except OSError as exc:  # a full disk must not hide the reason: it still reaches the log
            print(f"cannot write {path} ({exc.strerror})", file=sys.stderr)
    log.error(message.splitlines()[0])
    print(message.splitlines()[0], file=sys.stderr)
    return code
