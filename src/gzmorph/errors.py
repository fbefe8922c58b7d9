"""The exceptions users see as one line (``gzmorph: error: ...``, exit status 2), never as a traceback.

Callers that must tell problems apart catch a subclass; the CLI catches them all as :class:`GzmorphError`.
"""


class GzmorphError(Exception):
    """A problem with the user's input or environment. Messages say which file/row, what is wrong, what to do."""


class BadData(GzmorphError):
    """A data file or folder cannot be used: a catalogue, an image, a folder layout, a feature file."""


class BadRun(GzmorphError):
    """A run folder, or a weights or checkpoint file in it, cannot be used."""


class BadArgument(GzmorphError):
    """An option or argument value is not allowed."""


class TrainingStopped(GzmorphError):
    """Training was asked to stop (SIGTERM) and stopped after writing a checkpoint; ``--resume`` continues it."""

    exit_status = 128 + 15  # what a process killed by SIGTERM reports, so a scheduler sees the job did not finish


class BadImage(Exception):
    """One image file that cannot be used; the message says why. Not a GzmorphError: callers decide whether it stops
    the job (naming the file) or is a counted, logged skip (``--skip-bad``)."""
