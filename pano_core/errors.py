"""Error types of Pano360."""


class PanoInputError(ValueError):
    """Bad user input. The message names the input and says what was expected."""
