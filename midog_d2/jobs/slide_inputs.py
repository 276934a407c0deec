"""The slide tool's inputs: which files are slides, and the output stem of each."""

import glob
import os
from typing import Dict, List, Sequence

from . import slide_outputs
from .slide_markers import MARKER_SUFFIX

__all__ = ["SLIDE_EXTENSIONS", "expand_inputs", "is_output", "slide_stems"]

# What a folder is searched for (files and globs given by name are taken as they are).
SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".png",
    ".jpg",
    ".jpeg",
)


def is_output(path: str) -> bool:
    """Whether ``path`` is named like one of this tool's outputs (an overlay PNG, ...)."""
    name = os.path.basename(path).lower()
    return name.endswith(tuple(o.suffix for o in slide_outputs.OUTPUTS) + (MARKER_SUFFIX,))


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """The slide files named by ``inputs``: files as given, folders' files with a
    :data:`SLIDE_EXTENSIONS` suffix (not recursing: a MIRAX slide's data folder holds no
    slide), glob patterns' matches; sorted within each input, duplicates dropped; the
    tool's own outputs (:func:`is_output`) left out of folders and patterns, and an error
    when named. An input that names nothing is an error."""
    found: List[str] = []
    seen = set()
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(
                os.path.join(item, n)
                for n in os.listdir(item)
                if n.lower().endswith(SLIDE_EXTENSIONS)
                and not is_output(n)
                and os.path.isfile(os.path.join(item, n))
            )
            if not names:
                raise FileNotFoundError(
                    f"{item}: a folder with no slide in it (looked for {', '.join(SLIDE_EXTENSIONS)})"
                )
        elif os.path.isfile(item):
            if is_output(item):
                raise ValueError(f"{item}: an output of tools/infer_slides.py, not a slide")
            names = [item]
        elif glob.has_magic(item):
            names = sorted(
                p for p in glob.glob(item, recursive=True) if os.path.isfile(p) and not is_output(p)
            )
            if not names:
                raise FileNotFoundError(f"{item}: the pattern matches no file")
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
        for n in names:
            key = os.path.abspath(n)
            if key not in seen:
                seen.add(key)
                found.append(n)
    return found


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in SLIDE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def slide_stems(paths: Sequence[str]) -> Dict[str, str]:
    """path -> output stem (the file name without its extension). Two slides with one stem
    would overwrite each other's outputs: an error naming both."""
    stems: Dict[str, str] = {}
    owner: Dict[str, str] = {}
    for p in paths:
        s = _stem(p)
        if s in owner:
            raise ValueError(
                f"{owner[s]} and {p} would both write outputs named {s!r}: "
                "run them into different --output folders"
            )
        owner[s] = p
        stems[p] = s
    return stems
