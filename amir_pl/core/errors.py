"""The one error type a user sees as a line instead of a traceback."""


class AmirError(Exception):
    """An error the user can fix; its message names the file or option and the fix."""
