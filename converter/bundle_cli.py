"""`qconv bundle`: a deploy bundle (device binary, model, run.sh) for a board (converter/bundle.py)."""

from __future__ import annotations

from pathlib import Path

import click

from qconv.converter.bundle import TARGETS, make_bundle
from qconv.converter.cli_errors import user_errors


@click.command("bundle")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--target", "target_name", required=True, type=click.Choice(list(TARGETS)), help="The board.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="bundle.tar.gz")
@click.option("--binary", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Use this qrun-native.")
@user_errors
def bundle(model: Path, target_name: str, output: Path, binary: Path | None) -> None:
    """Pack MODEL (a GGUF) with qrun-native for a board into a tar.gz with a run.sh."""
    result = make_bundle(model, target_name, output, binary)
    t = result.target
    click.echo(
        f"{result.path}: {t.board}, {t.arch} qrun-native (kernels: {t.kernel}), {model.name} "
        f"({result.model_bytes / 2**20:.0f} MiB)\n"
        f'  on the board: tar xzf {result.path.name} && ./qconv-bundle-{t.name}/run.sh -p "Hello"'
    )
