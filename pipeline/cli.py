"""The entry points' one command-line contract: parse, run, one log line, an exit code.

Every entry point (`train_model.py`, `serve_model.py`, `score_batch.py`, `registry.py`,
`run_local.py`) is a `CommandLine`: its name, its folder's `parse_args` and the function that
runs its steps, and which exceptions are its documented failures. `CommandLine.main(argv)`
parses, runs and returns the exit code, so that tests call an entry point in-process as well
as through a process, and the `if __name__ == "__main__":` block only passes it to `sys.exit`.

Whatever happens, at most one line is logged here, and every failure is exactly one ERROR line
with exit code 1:

- bad arguments: `Invalid arguments passed to NAME.py: WHY; USAGE` (`; USAGE` only where the
  entry point has one);
- a check after parsing that says the command cannot run here: its own sentence;
- a documented failure: `WHAT failed: WHY` (WHAT is the name, or e.g. `registry list`);
- anything else: `WHAT failed unexpectedly: REPR`, so the unforeseen also ends in one line;
- a stop asked for (a signal, Ctrl-C): an INFO line, exit code 0; or, where a stop leaves the
  work undone (batch scoring), an ERROR line and the command's stop exit code.

The line is logged with the caller's frame (`stacklevel`), so that its `%(module)s.%(funcName)s`
names the entry point, not this module: `train_model.<module>` when `main` is called from the
entry module's `if __name__ == "__main__":` block, `run_local.cli` when called from
run_local's `cli`. The log lines are part of the contracts (docs/api.md, docs/governance.md).

Standard library only, and no syntax newer than the oldest Python the local run must reach
its version check on: `run_local.py` imports this module before it knows the interpreter's
version.
"""
import logging
from typing import Callable, Generic, NamedTuple, Optional, Sequence, Tuple, Type, TypeVar

from pipeline.utils import configure_logger

log = logging.getLogger(__name__)

Arguments = TypeVar("Arguments")
# The frame whose module and function a line names: the caller of `CommandLine.main`.
CALLER = 2


class Failures(NamedTuple):
    """Exceptions that are documented failures of an entry point, and what its ERROR line says
    between `failed: ` and the exception's message (e.g. `the input is not UTF-8 text: `)."""

    exceptions: Tuple[Type[Exception], ...]
    explanation: str = ""


class Outcome(NamedTuple):
    """How a command line ended: its exit code, and the one line it logs (if any)."""

    exit_code: int
    level: int = logging.INFO
    message: Optional[str] = None


class CommandLine(Generic[Arguments]):
    """An entry point's command line: how it parses, what it runs, how each ending is logged.

    Args:
        name: the entry module's name; bad arguments are `Invalid arguments passed to NAME.py`,
            and failures `NAME failed: ...` unless `what` says otherwise.
        parse_args: parses the arguments (without the program name); raises ValueError on bad ones.
        run: runs the command with the parsed arguments; what it returns is ignored.
        usage: appended to the bad-arguments line after `; `; None for no usage.
        failures: the documented failures, checked in order; the first that matches explains.
        stops: exceptions that mean "stop as asked" (a signal, Ctrl-C): exit code `stop_exit_code`.
        stopped: the line of a stop, from the exception: INFO with exit code 0, else ERROR.
        stop_exit_code: the exit code of a stop: 0 where stopping is how the command ends (a
            service), 143 (128 + SIGTERM) where a stop leaves the work undone (batch scoring),
            so that Kubernetes counts the run as failed.
        check: called after parsing and before running: why the command cannot run here (the
            ERROR line, exit code 1), or None.
        what: the failing thing as the ERROR line names it, from the arguments (`registry list`).
        done: an INFO line logged when the command ran to its end; None for none.
    """

    def __init__(
        self,
        name: str,
        parse_args: Callable[[Sequence[str]], Arguments],
        run: Callable[[Arguments], object],
        usage: Optional[str],
        failures: Sequence[Failures] = (),
        stops: Tuple[Type[BaseException], ...] = (),
        stopped: Callable[[BaseException], str] = str,
        stop_exit_code: int = 0,
        check: Optional[Callable[[Arguments], Optional[str]]] = None,
        what: Optional[Callable[[Arguments], str]] = None,
        done: Optional[str] = None,
    ) -> None:
        self.name = name
        self.parse_args = parse_args
        self.run = run
        self.usage = usage
        self.failures = tuple(failures)
        self.stops = stops
        self.stopped = stopped
        self.stop_exit_code = stop_exit_code
        self.check = check
        self.what = what
        self.done = done

    def main(self, argv: Sequence[str], configure_logging: bool = True) -> int:
        """Parse `argv`, run, log how it ended in one line, and return the exit code.

        Args:
            argv: the arguments, without the program name (`sys.argv[1:]`).
            configure_logging: send logging to stdout in the project's format first, as a
                process does; a test that captures the records itself may leave it out.

        Returns:
            0 when the command ran or was stopped as asked (`stop_exit_code` for a stop); 1 on
            bad arguments or any failure.

        Raises:
            BaseException: what is neither an Exception nor one of `stops` (SystemExit,
                KeyboardInterrupt where it is no stop) passes through, as Python handles it.
        """
        if configure_logging:
            configure_logger()
        outcome = self.outcome(argv)
        if outcome.message is not None:
            log.log(outcome.level, outcome.message, stacklevel=CALLER)
        return outcome.exit_code

    def outcome(self, argv: Sequence[str]) -> Outcome:
        """Parse `argv` and run; how it ended, not yet logged.

        Args:
            argv: the arguments, without the program name.

        Returns:
            The exit code and the one line that says how the command ended.
        """
        try:
            arguments = self.parse_args(argv)
        except ValueError as error:
            usage = f"; {self.usage}" if self.usage is not None else ""
            return Outcome(1, logging.ERROR, f"Invalid arguments passed to {self.name}.py: {error}{usage}")
        problem = self.check(arguments) if self.check is not None else None
        if problem is not None:
            return Outcome(1, logging.ERROR, problem)
        try:
            self.run(arguments)
        except self.stops as stop:
            level = logging.INFO if self.stop_exit_code == 0 else logging.ERROR
            return Outcome(self.stop_exit_code, level, self.stopped(stop))
        except Exception as error:  # the one ERROR line must also cover the unforeseen
            what = self.what(arguments) if self.what is not None else self.name
            for failure in self.failures:
                if isinstance(error, failure.exceptions):
                    return Outcome(1, logging.ERROR, f"{what} failed: {failure.explanation}{error}")
            return Outcome(1, logging.ERROR, f"{what} failed unexpectedly: {error!r}")
        return Outcome(0, logging.INFO, self.done)
