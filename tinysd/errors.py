"""The one exception type meant for users.

A `TinySDError` message names the file, tensor or option at fault in one line.
The CLI prints it and exits with status 2. It subclasses ValueError so that
kernel argument checks (`ValueError` naming the argument) and user errors are
caught the same way.
"""


class TinySDError(ValueError):
    """A user-facing error: bad input, bad file, bad option."""
