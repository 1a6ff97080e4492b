"""The one exception type the user sees: bad input, explained in one line."""


class InputError(ValueError):
    """Bad user input (missing/corrupt file, wrong geometry, unknown vertebra, ...).

    The CLI prints ``spinereg: error: <message>`` and exits with status 2; the Slicer
    module shows the message. The message is one line and names the offending value.
    """
