"""User-facing errors: one line and an exit code, no traceback.

UserError (exit code 2): bad input the user can fix. RunFailed (exit code 1): a run that failed in a
way no retry can cure - not the input's fault, but its cause is one line too, printed under the
failed worker's traceback.
"""

from __future__ import annotations

from collections.abc import Iterator


class UserError(Exception):
    """A bad config, input or workspace state that the user can fix.

    The message is one line that names the key or file and says what is wrong.
    """

    exit_code = 2

    def __init__(self, message: str, detail: str = ""):
        super().__init__(" ".join(str(message).split()))
        self.detail = detail  # printed above the line, e.g. the traceback of a worker that failed


class MissingIndex(UserError):
    """Outputs built before an index that is asked for now (a corpus version's index/ngrams, the
    shards' document index): rebuilding them adds it."""


class RunFailed(UserError):
    """A run ended by an error a restart cannot cure (an import error on the workers, a shape
    mismatch): reported in one line like a UserError, with exit code 1."""

    exit_code = 1


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc` and what it was raised from: along `__cause__`, and Ray's `cause` (a task's or worker's
    exception re-raised in the driver)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = getattr(exc, "cause", None) or exc.__cause__


def user_error_in(exc: BaseException | None) -> UserError | None:
    """The UserError (or RunFailed) that caused `exc`, if one did: the innermost, since Ray re-raises
    a task's UserError as a RayTaskError that is a UserError too, whose text is the traceback."""
    found = [e for e in causes(exc) if isinstance(e, UserError)]
    return found[-1] if found else None
