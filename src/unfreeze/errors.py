"""The one exception type that means "the user asked for something we cannot do".

Anything raised as `UsageError` reaches the user as a single line (no traceback) and exit status 2;
every other exception is a bug and keeps its traceback.
"""


class UsageError(Exception):
    """Bad input: the message names the problem and the flag or file that fixes it."""


def require(condition: bool, message: str) -> None:
    """Raise `UsageError(message)` unless `condition` holds."""
    if not condition:
        raise UsageError(message)
