"""Visual inputs: one abstraction for vectors, grids and region boxes (see ``vqa.visual.base``).

The registry of input kinds and of the sources that fill them. A run's ``data.features``
names a source, or is "auto": then the first source, in the order below, of a kind its
model reads (``vqa.registry``) whose file the train split holds. Adding an input kind
means one module beside these (its ``KIND`` and ``SOURCES``) and one line here.
"""

from __future__ import annotations

from pathlib import Path

from vqa.errors import VQAError
from vqa.visual import grid, region, vector
from vqa.visual.base import Kind, Source, VisualReader, VisualSpec, pad_inputs, rows_for

__all__ = ["AUTO", "KINDS", "SOURCES", "Kind", "Source", "VisualReader", "VisualSpec", "kind_of_model",
           "open_source", "pad_inputs", "resolve_source", "rows_for", "source"]

AUTO = "auto"
KINDS: dict[str, Kind] = {module.KIND.name: module.KIND for module in (vector, grid, region)}
SOURCES: dict[str, Source] = {item.name: item for module in (vector, grid, region) for item in module.SOURCES}
SOURCE_CHOICES = (AUTO, *SOURCES)


def source(name: str) -> Source:
    """The source called ``name``, or one sentence listing them."""
    if name not in SOURCES:
        raise VQAError(f"data.features must be one of {', '.join(SOURCE_CHOICES)}, not {name!r}.")
    return SOURCES[name]


def resolve_source(requested: str, model: str, reads: tuple[str, ...], split_dir: Path) -> str | None:
    """The source a run of ``model`` reads: ``requested``, or the first available one for "auto".

    Args:
        requested: ``data.features``.
        model: the model's name, for messages.
        reads: the kinds the model reads, in order of preference; () for a blind model (None returned).
        split_dir: the train split folder the choice is made on.

    Raises:
        VQAError: the requested source is of a kind the model does not read, or "auto" finds no file.
    """
    if not reads:
        return None
    if requested != AUTO:
        chosen = source(requested)
        if chosen.kind not in reads:
            raise VQAError(f"model {model} reads {' or '.join(reads)} inputs, but data.features={requested} gives "
                           f"{chosen.what} ({chosen.kind}); pick one of "
                           f"{', '.join(item.name for item in SOURCES.values() if item.kind in reads)}, or auto.")
        return requested
    candidates = [item for kind in reads for item in SOURCES.values() if item.kind == kind]
    # A model that reads a grid reads it as a grid: the grid read as regions is then asked for by name,
    # never guessed. A regions-only model (updown, mcan) has no other way to read a grid, so for it
    # grid-regions is a candidate, after detector regions.
    if "grid" in reads:
        candidates = [item for item in candidates if item.name != "grid-regions"]
    for item in candidates:
        if item.path(split_dir).is_file():
            return item.name
    wanted = ", ".join(f"{item.path(split_dir).name} ({item.what})" for item in candidates)
    raise VQAError(f"{split_dir} holds none of the files model {model} can read ({wanted}); preprocess with image "
                   "features, or import grids (--grid-features) or regions (--regions).")


def open_source(name: str, split_dir: Path) -> VisualReader:
    """Open source ``name`` on a split folder (close it with ``close()``).

    Raises:
        VQAError: the split folder lacks the file, or it is damaged.
    """
    chosen = source(name)
    path = chosen.path(split_dir)
    if not path.is_file():
        raise VQAError(f"{split_dir} has no {path.name}, which data.features={name} ({chosen.what}) reads; "
                       "preprocess or import it first, or pick another data.features.")
    return chosen.open(split_dir)


def kind_of_model(inputs: dict) -> tuple[Kind, VisualSpec] | None:
    """The kind and spec a model reads, from its input tensors by name; None for a blind model."""
    for kind in KINDS.values():
        if kind.input_names[0] in inputs:
            return kind, kind.spec_of(inputs)
    return None
