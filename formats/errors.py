"""The one exception type for bad input files: the CLIs print its message (no traceback) and exit non-zero."""


class FormatError(Exception):
    """A user-facing problem with an input or output file.

    The message names the file, the tensor or key, and what was expected versus found, e.g.
    ``model.safetensors: tensor 'model.norm.weight' has shape [576], config.json says [960]``.
    """
