"""User-facing errors: one line, exit code 2, no traceback."""


class UserError(Exception):
    """A bad config, input or workspace state that the user can fix.

    The message is one line that names the key or file and says what is wrong.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
