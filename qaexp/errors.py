"""The one error type users see: a short paragraph that names the key or file and the fix."""


class QAExpError(Exception):
    """A problem with the user's input or environment; printed without a traceback."""


class RunInterrupted(QAExpError):
    """A stop signal ended the run at a safe point, with its state saved."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
