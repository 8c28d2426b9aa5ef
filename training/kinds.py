"""The command that trains, and the one that evaluates, a run of each config kind (``image``, ``video``): the
zoo, the sweep and ``eval.compare`` look them up here instead of branching on the kind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from eval.vis import image as eval_image
from eval.vis import video as eval_video
from training import train_image, train_video

# main(argv) of each: training returns the run folder, evaluation writes <run>/results/<split>/
TRAIN: dict[str, Callable[[list[str]], Path]] = {"image": train_image.main, "video": train_video.main}
EVALUATE: dict[str, Callable[[list[str]], object]] = {"image": eval_image.main, "video": eval_video.main}
