"""The one exception type for bad user input.

Library code raises :class:`TangentError` with a single line that names the file, field and value at
fault; the CLI prints that line and exits with code 2 instead of a traceback.
"""


class TangentError(Exception):
    """Bad input or an impossible request, described in one human-readable line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
