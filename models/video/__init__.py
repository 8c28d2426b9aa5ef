"""Video models. Importing this package registers them (``video_model_cfg.model_name``); see
:mod:`models.video.base` for the contract they keep."""

from models.video import dff, keyframe_flow, netwarp, per_frame, ssp, tcb  # noqa: F401  (each registers its builder)
