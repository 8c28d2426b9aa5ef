"""Dataset descriptors: class names, display colours, ignore id, label conversion, default paths.

Every prepared dataset stores its masks as single-channel PNGs of *raw* values: ``raw = train_id + 1`` and
``0 = ignore`` (the SSP reference convention, ``ssp.md`` §7.3). :meth:`DatasetInfo.mask_to_train_ids` turns a
raw mask into training ids (0 .. C-1, 255 = ignore) and rejects values outside the class table, because such a
value is a conversion bug, not something to hide. Teacher pseudo-labels (:mod:`data.compound`) are stored as
training ids already (``label_encoding="train_ids"``: 0 .. C-1, 255 = void) and pass through unchanged. The
source-label conversions used by the preparation step (UAVid/VDD colours, RuralScapes colours, Cityscapes label
ids) live here too, so that there is one table per dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from config.errors import ConfigError, DataError, did_you_mean

IGNORE_INDEX = 255
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class DatasetInfo:
    """What the code needs to know about one dataset. Colours are RGB."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[RGB, ...]  # display colour per training id
    default_root: str  # relative to the repository root, overridden by data_cfg.path
    fps: float  # frame rate of the prepared clips (GIF/MP4 speed)
    # the command that prepares the dataset in default_root; "{root}" stands for the folder when the command
    # writes any folder (the generator), otherwise the folder is set with --datasets-dir (see prepare_hint)
    prepare_command: str
    # raw source colour -> raw mask value, for datasets whose source labels are RGB images
    source_colors: dict[RGB, int] = field(default_factory=dict)
    # source label id -> training id, for datasets whose source labels are id images (Cityscapes)
    source_ids: dict[int, int] = field(default_factory=dict)
    # the reference student's input size (data_cfg.crop_size, H, W): the default size of a teacher's logits dump
    # (eval.vis.image --save-logits --logits-size student); None = no reference student (keep the teacher's size)
    student_size: tuple[int, int] | None = None
    # how mask PNGs store labels: "raw" (id + 1, 0 = ignore; prepared datasets) or "train_ids" (0 .. C-1 and
    # 255 = void as they are; teacher pseudo-labels, data.compound)
    label_encoding: Literal["raw", "train_ids"] = "raw"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def ignore_index(self) -> int:
        return IGNORE_INDEX

    def prepare_hint(self, root: str | Path | None = None) -> str:
        """How to prepare this dataset in ``root`` (default ``default_root``), for messages: a command in backticks.

        Messages must name the folder the user configured (``data_cfg.path``), not the default one. The generator
        writes any folder (``--force`` when one is there already, since it leaves an existing set alone
        otherwise); the real-data preparation writes ``<datasets-dir>/<default folder name>``, so a folder of
        another name gets a note saying where the data will land.
        """
        default = Path(self.default_root)
        root = default if root is None else Path(root)
        if "{root}" in self.prepare_command:
            replace = " --force" if root.is_dir() and any(root.iterdir()) else ""
            return f"`{self.prepare_command.format(root=root)}{replace}`"
        if root == default or root.resolve() == default.resolve():
            return f"`{self.prepare_command}`"
        command = f"`{self.prepare_command} --datasets-dir {root.parent}`"
        if root.name == default.name:
            return command
        return f"{command} (it writes {root.parent / default.name}: set data_cfg.path to that folder)"

    def palette_array(self) -> np.ndarray:
        """(256, 3) uint8 RGB lookup table: training id -> colour; ignore (255) is black."""
        lut = np.zeros((256, 3), np.uint8)
        lut[: self.num_classes] = np.asarray(self.palette, np.uint8)
        return lut

    def mask_to_train_ids(
        self, raw: np.ndarray, path: str | Path = "<array>", root: str | Path | None = None
    ) -> np.ndarray:
        """Raw prepared mask (H, W) uint8 -> training ids (H, W) uint8, 255 = ignore.

        Raises :class:`DataError` naming ``path`` (and how to prepare the dataset in ``root``) when a value lies
        outside 0 .. num_classes. With ``label_encoding="train_ids"`` the values 0 .. C-1 and 255 pass through and
        any other value is an error that says to re-run the pseudo-labelling.
        """
        if raw.ndim != 2:
            raise DataError(f"{path}: a mask must be a single-channel image, got shape {raw.shape}")
        if self.label_encoding == "train_ids":
            bad = (raw >= self.num_classes) & (raw != IGNORE_INDEX)
            if bad.any():
                values = sorted(int(v) for v in np.unique(raw[bad]))[:5]
                raise DataError(
                    f"{path}: label values {values} are outside the {self.name} training ids "
                    f"(0..{self.num_classes - 1} = classes, {IGNORE_INDEX} = void); re-run the pseudo-labelling "
                    "(python -m eval.pseudo_label CONFIG) that wrote it"
                )
            return raw.astype(np.uint8, copy=True)
        bad = raw > self.num_classes
        if bad.any():
            values = sorted(int(v) for v in np.unique(raw[bad]))[:5]
            raise DataError(
                f"{path}: label values {values} are outside the {self.name} class table "
                f"(0 = ignore, 1..{self.num_classes} = classes); "
                f"re-run the preparation ({self.prepare_hint(root)})"
            )
        out = raw.astype(np.int16) - 1
        out[raw == 0] = IGNORE_INDEX
        return out.astype(np.uint8)

    def train_ids_to_raw(self, ids: np.ndarray) -> np.ndarray:
        """Training ids (H, W) -> raw PNG values (id + 1, ignore -> 0), the reference prediction format."""
        out = ids.astype(np.int16) + 1
        out[ids == IGNORE_INDEX] = 0
        return out.astype(np.uint8)

    def colorize(self, ids: np.ndarray) -> np.ndarray:
        """Training ids (H, W) -> (H, W, 3) uint8 RGB image."""
        return self.palette_array()[ids]


_VDD_CLASSES = ("road", "vegetation", "tree", "person", "vehicle", "water", "building", "roof")
_VDD_PALETTE: tuple[RGB, ...] = (
    (128, 0, 128),
    (112, 148, 32),
    (64, 64, 0),
    (255, 16, 255),
    (0, 128, 128),
    (0, 0, 255),
    (255, 0, 0),
    (64, 160, 120),
)

UAVID = DatasetInfo(
    name="uavid",
    class_names=_VDD_CLASSES,
    palette=_VDD_PALETTE,
    default_root="datasets/UAVid",
    fps=20.0,
    prepare_command="bash process_dataset.sh --only uavid",
    student_size=(736, 1280),
    # UAVid RGB label colour -> raw value. Water (6) and roof (8) come from the VDD overlay, not from UAVid.
    source_colors={
        (0, 0, 0): 0,  # clutter -> ignore
        (128, 64, 128): 1,  # road
        (128, 128, 0): 2,  # low vegetation
        (0, 128, 0): 3,  # tree
        (64, 64, 0): 4,  # human
        (64, 0, 128): 5,  # moving car
        (192, 0, 192): 5,  # static car
        (128, 0, 0): 7,  # building
    },
)

_RURAL_PALETTE: tuple[RGB, ...] = (
    (255, 255, 0), (0, 255, 0), (0, 127, 0), (0, 255, 255), (127, 127, 0), (255, 255, 255),
    (127, 127, 63), (255, 0, 255), (127, 127, 127), (255, 0, 0), (255, 127, 0), (0, 0, 255),
)  # fmt: skip

RURALSCAPES = DatasetInfo(
    name="ruralscapes",
    class_names=(
        "residential",
        "land",
        "forest",
        "sky",
        "fence",
        "road",
        "hill",
        "church",
        "car",
        "person",
        "haystack",
        "water",
    ),  # fmt: skip
    palette=_RURAL_PALETTE,
    default_root="datasets/ruralscapes",
    fps=10.0,
    prepare_command="bash process_dataset.sh --only ruralscapes",
    student_size=(736, 1280),
    # RuralScapes labels use the display colours; black is unlabeled.
    source_colors={(0, 0, 0): 0, **{c: i + 1 for i, c in enumerate(_RURAL_PALETTE)}},
)

_CITYSCAPES_TRAIN = (
    # (label id, train id, name, colour)
    (7, 0, "road", (128, 64, 128)),
    (8, 1, "sidewalk", (244, 35, 232)),
    (11, 2, "building", (70, 70, 70)),
    (12, 3, "wall", (102, 102, 156)),
    (13, 4, "fence", (190, 153, 153)),
    (17, 5, "pole", (153, 153, 153)),
    (19, 6, "traffic light", (250, 170, 30)),
    (20, 7, "traffic sign", (220, 220, 0)),
    (21, 8, "vegetation", (107, 142, 35)),
    (22, 9, "terrain", (152, 251, 152)),
    (23, 10, "sky", (70, 130, 180)),
    (24, 11, "person", (220, 20, 60)),
    (25, 12, "rider", (255, 0, 0)),
    (26, 13, "car", (0, 0, 142)),
    (27, 14, "truck", (0, 0, 70)),
    (28, 15, "bus", (0, 60, 100)),
    (31, 16, "train", (0, 80, 100)),
    (32, 17, "motorcycle", (0, 0, 230)),
    (33, 18, "bicycle", (119, 11, 32)),
)

CITYSCAPES = DatasetInfo(
    name="cityscapes",
    class_names=tuple(r[2] for r in _CITYSCAPES_TRAIN),
    palette=tuple(r[3] for r in _CITYSCAPES_TRAIN),
    default_root="datasets/cityscapes",
    fps=17.0,
    prepare_command="bash process_dataset.sh --only cityscapes",
    # Cityscapes label ids 0..33 (and -1, license plate); every id not listed is ignored.
    source_ids={r[0]: r[1] for r in _CITYSCAPES_TRAIN},
)

SYNTHETIC = DatasetInfo(
    name="synthetic",
    class_names=_VDD_CLASSES,
    palette=_VDD_PALETTE,
    default_root="datasets/synthetic",
    fps=10.0,
    prepare_command="python -m data.synthetic --out {root}",
    student_size=None,  # generated at any size; the synthetic students share their teacher's input size
)

DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (UAVID, RURALSCAPES, CITYSCAPES, SYNTHETIC)}


def get_dataset_info(name: str) -> DatasetInfo:
    """Descriptor by name; an unknown name is a :class:`ConfigError` that lists the known ones."""
    if name not in DATASETS:
        raise ConfigError(
            f"data_cfg.dataset: unknown dataset '{name}'{did_you_mean(name, DATASETS)}; known: {', '.join(DATASETS)}"
        )
    return DATASETS[name]


def cityscapes_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes ``*_labelIds.png`` values (H, W) -> training ids (H, W) uint8, 255 = ignore."""
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for src, dst in CITYSCAPES.source_ids.items():
        lut[src] = dst
    return lut[label_ids.astype(np.uint8)]
