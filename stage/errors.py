"""What can go wrong for a person using Stage, each with the HTTP status it maps to.

Messages are written for the person reading them; internal detail stays in the log.
"""


class StageError(Exception):
    status = 400

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(StageError):
    status = 400


class Unauthorized(StageError):
    status = 401


class NotFound(StageError):
    status = 404


class Conflict(StageError):
    """Not now: nothing (or nothing else) is live, or a file is still being written."""

    status = 409


class RequestTimeout(StageError):
    """The body did not come in time (a client that sent its headers and stalled)."""

    status = 408


class PayloadTooLarge(StageError):
    status = 413


class UnsupportedMediaType(StageError):
    status = 415


class Unprocessable(StageError):
    """Understood, but not something Stage can do (an ICE restart, for one)."""

    status = 422


class Full(StageError):
    status = 503
