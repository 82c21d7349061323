"""Errors that mean "the user asked for something that cannot work".

`utils.main` prints them as one line and exits non-zero instead of showing a
traceback, so every message must name the problem *and* the fix.
"""


class UserError(ValueError):
    """Bad input: unknown names, invalid values, incompatible options."""


class DataError(UserError):
    """Missing, truncated or corrupt dataset files."""
