"""The one error type a user sees as a message, not a traceback (see ``photoid.cli``)."""


class DataError(ValueError):
    """An input (a label file, a table, a parameter) is unusable as it is; the message says which
    file, row or key, and what to do."""


class MissingInput(DataError, FileNotFoundError):
    """A file a stage reads does not exist (its stage has not run, or a path is wrong): reported as a
    message naming the file, like any :class:`DataError`, and still a FileNotFoundError to callers."""
