"""User-facing errors: one line, exit code 2, no traceback."""


class UserError(Exception):
    """A bad config, input or workspace state that the user can fix.

    The message is one line that names the key or file and says what is wrong.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def user_error_in(exc: BaseException | None) -> UserError | None:
    """The UserError that caused `exc`, if one did: along `__cause__`, and Ray's `cause` (a task's
    or worker's exception re-raised in the driver)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None
