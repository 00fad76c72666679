"""The one error type users see: a short paragraph that names the key or file and the fix."""


class QAExpError(Exception):
    """A problem with the user's input or environment; printed without a traceback."""
