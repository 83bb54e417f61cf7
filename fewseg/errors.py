"""The one exception type that reaches the user as a one-line message."""


class FewSegError(Exception):
    """Bad input or configuration: the CLI prints ``fewseg: error: <message>`` and exits 2.

    The message names the offending file, value or option, so that the user can act on it
    without a traceback.
    """
