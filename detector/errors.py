"""Errors the detector's commands report to a person as one line."""


class UserError(Exception):
    """A one-line error for the user (exit status 2)."""
