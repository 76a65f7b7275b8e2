"""Say which dataset a command reads when its ``--data-dir`` holds several."""

from __future__ import annotations

import os

import click

__all__ = ["dataset_note"]


def dataset_note(
    data_dir: str | os.PathLike[str] | None, name: str | None, given: str | None = None
) -> None:
    """Print one line (stderr) naming the dataset ``name`` picked from a folder holding several.

    Nothing is printed where the user chose with ``--dataset`` (``given``), where there is no
    ``data_dir``, or where the folder holds only one dataset.
    """
    from deconvviz.sources.data import find_datasets

    if data_dir is None or name is None or given not in (None, "auto"):
        return
    found = find_datasets(data_dir) if os.path.isdir(data_dir) else {}
    if len(found) > 1 and name in found:
        click.echo(
            f"using dataset {name} from {os.fspath(data_dir)} (the folder holds {len(found)}; "
            "pass --dataset NAME to choose)",
            err=True,
        )
