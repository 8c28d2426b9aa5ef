"""The embedded synthetic aerial (drone) video dataset: the default data of the demo, the tests and comparisons.

Each video is one continuous 10 fps flight over its own procedurally generated world (roads with markings and
intersections, buildings seen obliquely, fields, tree crowns, water, parked and moving vehicles, persons,
clutter patches labelled ignore), cut into consecutive clips. Train clips have a mask on their last frame only
(sparse, as UAVid); val clips are labelled densely. Every clip stores its true frame-to-frame homographies and
true forward/backward optical flow. See :mod:`data.synthetic.io` for the file layout.

    python -m data.synthetic --out datasets/synthetic            # the default set (~20 s on 2 cores)

    from data.synthetic import SyntheticParams, ensure_synthetic
    ensure_synthetic(Path("datasets/synthetic"), SyntheticParams(height=128, width=224))
"""

from data.synthetic.generate import ensure_synthetic, generate, is_complete
from data.synthetic.io import load_flow, load_homographies
from data.synthetic.params import GENERATOR_VERSION, SyntheticParams

__all__ = [
    "GENERATOR_VERSION",
    "SyntheticParams",
    "ensure_synthetic",
    "generate",
    "is_complete",
    "load_flow",
    "load_homographies",
]
