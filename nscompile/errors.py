"""The one user-facing exception type.

A :class:`NscompileError` is a problem with what the user gave us (a file, a flag, a
server address); the CLI prints its message on one line and exits 2. Anything else that
escapes is a bug and keeps its traceback.
"""


class NscompileError(Exception):
    """A user error: the message names what is wrong and says what to do next."""


class InternalError(Exception):
    """A broken invariant inside nscompile: a bug, never the user's input.

    The CLI lets it escape with its traceback, so that the report of the bug says where.
    """
