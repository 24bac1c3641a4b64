"""Errors that are the user's to fix: printed as one line, exit code 2, no traceback."""


class UserError(Exception):
    """A bad recipe, a missing file or an impossible request."""


class RecipeError(UserError):
    """A recipe key that is unknown, of the wrong type, or names a missing path."""
