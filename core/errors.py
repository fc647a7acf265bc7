"""The flat exception hierarchy of tunerag. Every error a user can cause derives from ``TuneragError``.

The CLI prints ``error: <message>`` and exits non-zero for these; the API maps them to 4xx JSON bodies.
Messages name the bad value and, where there is one, the fix.
"""

from __future__ import annotations


class TuneragError(Exception):
    """Base class: an error the user can act on (bad input, missing model, busy resource)."""

    status_code: int = 400


class ConfigError(TuneragError):
    """Settings or a config file are invalid."""


class ModelNotFoundError(TuneragError):
    """A model named by the settings cannot be found; the message says what to install or set."""

    status_code = 503


class InvalidInputError(TuneragError):
    """A document, dataset line or request is malformed; the message names the file/line/field."""

    status_code = 422


class NotFoundError(TuneragError):
    """A named thing (document, job, adapter, index version) does not exist."""

    status_code = 404


class ConflictError(TuneragError):
    """The operation clashes with the current state (a reindex already running, embedder mismatch)."""

    status_code = 409


class UnsupportedRequestError(TuneragError):
    """A well-formed request asks for something tunerag does not do (OpenAI's ``n`` > 1, say)."""

    status_code = 400
