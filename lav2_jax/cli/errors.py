"""The CLI's user-error type, in a module of its own so `python -m lav2_jax.cli.main` and the installed `lav2`
entry point raise and catch the same class."""


class UserError(Exception):
    """A mistake in the user's input: printed as one line, no traceback, exit status 2."""
