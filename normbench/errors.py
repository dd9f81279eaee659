"""Errors a user can cause and fix.

Everything raised as :class:`UserError` is caught at the command-line boundary and shown as one
line (what was wrong, what is allowed) with exit code 2 and no traceback. Programming errors are
any other exception and stay loud.
"""


class UserError(Exception):
    """A bad value, a missing file or an impossible combination that the user can correct."""

    exit_code = 2
