"""The one exception type for problems the user can fix.

A ``VQAError`` carries a single sentence naming the file, id or option at fault
and what to do about it. The CLI prints it and exits with status 1, without a
traceback; any other exception is a bug and keeps its traceback.
"""


class VQAError(Exception):
    """An error the user can fix: bad input, a missing file, a wrong option."""


def brief(error: BaseException | str, limit: int = 160) -> str:
    """An error message on one line, cut to ``limit`` characters, for inside a ``VQAError`` sentence."""
    message = " ".join(str(error).split())
    return message if len(message) <= limit else message[:limit - 3] + "..."
