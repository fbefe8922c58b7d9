"""The one exception type users see as a message, not a traceback."""


class GzmorphError(Exception):
    """A problem with the user's input or environment: the CLI prints it as one line and exits with status 2.

    Messages say which file/row, what is wrong, and what to do.
    """
