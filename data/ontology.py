"""Ontology mappings between label spaces, and prior-constrained pseudo-labels (``other_methods.md`` §2.2-2.3).

A mapping CSV says, for every *master* class (the teacher's taxonomy, ids ``0 .. N-1``, plus the void row
``255``), which classes of an *extra* dataset are compatible with it::

    id,name,compatible extra classes...
    0,road,road,parking
    1,sidewalk,sidewalk,curbstone
    255,void,unlabeled,curbstone

The first row is a header; empty cells are ignored; an extra class may sit in several rows (many-to-many). The
extra dataset's own ``labels.csv`` (Cityscapes style: ``name, id, trainId, ..., hasInstances, ...`` by column
name) names its raw label ids. :func:`read_mapping` checks every name against it (a misspelt one is an error that
names the row and the closest name), sends extra classes listed nowhere to void with one warning, and builds the
compatibility matrix ``A [N+1, L]`` (row ``N`` = void). :func:`constrain` then lets a teacher choose, at each
pixel, only among the master classes that the pixel's own extra label allows.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from config.errors import DataError, did_you_mean

VOID_ROW = 255  # the void row of a mapping CSV, and the void value of the pseudo-label PNGs
LABELS_COLUMNS = ("name", "id", "trainId", "hasInstances")


@dataclass(frozen=True)
class ExtraClass:
    """One row of an extra dataset's ``labels.csv``."""

    name: str
    id: int
    train_id: int
    has_instances: bool
    color: tuple[int, int, int] | None = None  # the optional ``color`` column, "(r,g,b)": for pictures only


def read_labels_csv(path: str | Path) -> list[ExtraClass]:
    """The classes of ``labels.csv``, in file order (columns found by name; ``#`` lines are comments)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: the extra dataset's labels.csv is missing; write it (columns {', '.join(LABELS_COLUMNS)}"
                        ", Cityscapes style) next to the mapping CSV")  # fmt: skip
    with open(p, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and not r[0].lstrip().startswith("#")]
    header = [c.strip() for c in rows[0]] if rows else []
    missing = [c for c in LABELS_COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"{p}: the header lacks the column(s) {', '.join(missing)}; it needs {', '.join(LABELS_COLUMNS)}"
        )
    col = {c: header.index(c) for c in LABELS_COLUMNS}
    color_col = header.index("color") if "color" in header else None
    out = []
    for n, row in enumerate(rows[1:], 2):
        try:
            out.append(ExtraClass(row[col["name"]].strip(), int(row[col["id"]]), int(row[col["trainId"]]),
                                  row[col["hasInstances"]].strip().lower() in ("1", "true", "yes"),
                                  _color(row[color_col]) if color_col is not None else None))  # fmt: skip
        except (IndexError, ValueError):
            raise DataError(
                f"{p}:{n}: expected a name, an integer id and trainId, got {','.join(row)}"
            ) from None
    names = [c.name for c in out]
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes:
        raise DataError(
            f"{p}: the class name(s) {', '.join(dupes)} appear more than once; names must be unique"
        )
    return out


def _color(cell: str) -> tuple[int, int, int] | None:
    """``"(r,g,b)"`` -> (r, g, b); anything else -> None (the colour only tints pictures)."""
    parts = cell.strip().strip("()[]").split(",")
    try:
        rgb = tuple(int(p) for p in parts)
    except ValueError:
        return None
    return rgb if len(rgb) == 3 and all(0 <= v < 256 for v in rgb) else None  # type: ignore[return-value]


@dataclass
class OntologyMapping:
    """A master taxonomy of ``N`` classes and an extra dataset's ``L`` classes.

    Attributes:
        master: the master class names, by id ``0 .. N-1``.
        extra: the extra dataset's classes (``labels.csv`` order; column ``l`` of the matrix).
        matrix: ``A`` [N+1, L] bool, ``A[k, l]``: master class ``k`` is compatible with extra class ``l``; row ``N``
            is void.
        unmapped: extra class names the CSV listed nowhere (sent to void).
    """

    master: list[str]
    extra: list[ExtraClass]
    matrix: np.ndarray
    unmapped: list[str]

    @property
    def num_master(self) -> int:
        return len(self.master)

    def id_lookup(self) -> np.ndarray:
        """``[256]`` int64: raw extra label id -> column of the matrix; an id ``labels.csv`` lacks -> -1."""
        lut = np.full(256, -1, np.int64)
        for col, c in enumerate(self.extra):
            if 0 <= c.id < 256:
                lut[c.id] = col
        return lut

    def candidates(self, extra_ids: np.ndarray | Tensor) -> Tensor:
        """``[N+1,H,W]`` bool: the master classes (and void, row ``N``) allowed at each pixel of an extra label map
        ``[H,W]`` of raw ids; an id ``labels.csv`` does not know allows only void."""
        ids = torch.as_tensor(np.asarray(extra_ids), dtype=torch.long)
        cols = torch.from_numpy(self.id_lookup())[ids.clamp(0, 255)]
        table = torch.cat(
            [torch.from_numpy(self.matrix), torch.zeros(self.num_master + 1, 1, dtype=torch.bool)], 1
        )
        table[self.num_master, -1] = True  # the extra column: unknown ids are void
        return table[:, torch.where(cols < 0, table.shape[1] - 1, cols)]


def read_mapping(
    csv_path: str | Path, labels_csv: str | Path | None = None, master: list[str] | None = None
) -> OntologyMapping:
    """Parse a mapping CSV (format above) against the extra dataset's ``labels.csv`` (default: beside the CSV).

    ``master`` (the source dataset's class names) is checked against the CSV's master rows when given.
    """
    p = Path(csv_path)
    if not p.is_file():
        raise DataError(f"{p}: the ontology mapping CSV is missing; see the README for its format")
    extra = read_labels_csv(labels_csv if labels_csv is not None else p.parent / "labels.csv")
    names = [c.name for c in extra]
    column = {n: i for i, n in enumerate(names)}
    with open(p, newline="") as fh:
        rows = list(csv.reader(fh))[1:]  # the header
    master_rows: dict[int, tuple[str, list[str]]] = {}
    void: list[str] = []
    for n, row in enumerate(rows, 2):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        try:
            k = int(cells[0])
        except ValueError:
            raise DataError(f"{p}:{n}: the first column must be a master class id (0..N-1, or 255 for void), "
                            f"got '{cells[0]}'") from None  # fmt: skip
        listed = [c for c in cells[2:] if c]
        for name in listed:
            if name not in column:
                raise DataError(f"{p}:{n}: '{name}' is not a class of {Path(labels_csv or p.parent / 'labels.csv').name}"
                                f"{did_you_mean(name, names)}; spell it as labels.csv does")  # fmt: skip
        if k == VOID_ROW:
            void += listed
        elif k in master_rows:
            raise DataError(f"{p}:{n}: master class id {k} appears twice; give each master class one row")
        else:
            master_rows[k] = (cells[1] if len(cells) > 1 else "", listed)
    ids = sorted(master_rows)
    if ids != list(range(len(ids))):
        raise DataError(
            f"{p}: the master class ids must be 0..N-1 without gaps (and 255 for void), got {ids}"
        )
    master_names = [master_rows[k][0] for k in ids]
    if master is not None and master_names != list(master):
        raise DataError(f"{p}: its master classes {master_names} are not the source taxonomy's {list(master)}; "
                        "list them in the same order, with the same names")  # fmt: skip
    matrix = np.zeros((len(ids) + 1, len(extra)), bool)
    for k in ids:
        for name in master_rows[k][1]:
            matrix[k, column[name]] = True
    for name in void:
        matrix[len(ids), column[name]] = True
    unmapped = [names[i] for i in np.flatnonzero(~matrix.any(0))]
    if unmapped:
        matrix[len(ids), [column[n] for n in unmapped]] = True
        warnings.warn(f"{p}: extra classes mapped to no master class become void: {', '.join(unmapped)}", UserWarning,
                      stacklevel=2)  # fmt: skip
    return OntologyMapping(master_names, extra, matrix, unmapped)


def constrain(scores: Tensor, candidates: Tensor | None, num_classes: int | None = None) -> Tensor:
    """Prior-constrained labels: ``scores`` [...,C,H,W] (``C = N`` classes, or ``N + 1`` with a void channel last,
    e.g. Mask2Former's no-object) and ``candidates`` [...,N+1,H,W] bool (:meth:`OntologyMapping.candidates`) ->
    label map [...,H,W] int64 in the master taxonomy with void = 255.

    Each pixel takes the best-scoring class among those its candidates allow; a pixel that allows only void (or,
    for a teacher without a void channel, nothing it can score) is void. ``candidates=None`` is the no-prior mode:
    the argmax over the ``num_classes`` (default: all channels) classes, so a void channel is dropped."""
    n = (num_classes or scores.shape[-3]) if candidates is None else candidates.shape[-3] - 1
    if candidates is None:
        return scores[..., :n, :, :].max(-3).indices
    if scores.shape[-3] not in (n, n + 1):
        raise ValueError(
            f"scores have {scores.shape[-3]} channels for a mapping of {n} master classes (+ void)"
        )
    allowed = candidates[..., : scores.shape[-3], :, :]
    masked = scores.float().masked_fill(~allowed, float("-inf"))
    best = masked.max(-3)
    labels = best.indices
    void = torch.isinf(best.values) | (labels == n)
    return labels.masked_fill(void, VOID_ROW)


def corrected_distribution(probs: Tensor, candidates: Tensor) -> Tensor:
    """``S * C / sum(S * C)`` over the channels (the soft target of KL training on pseudo-labels); ``probs``
    [...,C,H,W] non-negative, ``C`` as in :func:`constrain`. A pixel with no allowed mass keeps zeros."""
    allowed = candidates[..., : probs.shape[-3], :, :].to(probs.dtype)
    masked = probs * allowed
    return masked / masked.sum(-3, keepdim=True).clamp_min(1e-12)
