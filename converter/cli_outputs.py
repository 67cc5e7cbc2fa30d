"""The output rule of every qconv command that writes (to-gguf, to-onnx, calibrate, analyze -o, eval -o, sample), as
click help text and options, so that each command's --help states it the same way (formats/atomic_write.py does it).
"""

from __future__ import annotations

import click

FILE_RULE = "An existing file is replaced only once the new one is complete (a failed run leaves it as it was)."
FOLDER_RULE = (
    "A folder qconv wrote earlier is replaced only once the new one is complete (a failed run leaves it as it was); "
    "a non-empty folder qconv did not write is refused unless --force."
)

force_option = click.option(
    "--force", is_flag=True, help="Replace the output folder even if it is not empty and qconv did not write it."
)
