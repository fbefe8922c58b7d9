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


class BadImage(Exception):
    """One image file that cannot be used; the message says why. Not a GzmorphError: callers decide whether it stops
    the job (naming the file) or is a counted, logged skip (``--skip-bad``)."""
