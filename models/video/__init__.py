"""Video models. Importing this package registers them (``video_model_cfg.model_name``)."""

from models.video import ssp  # noqa: F401  (registers "base")
