"""The one exception every stage raises for bad input, and the exit code it maps to.

Its own module so that config (which raises it) and contract (which turns it
into exit code 2) need not import each other.
"""

BAD_INPUT_EXIT = 2


class StageError(Exception):
    """Bad input or an impossible setting, said in one sentence."""
