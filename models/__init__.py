"""Model components. Importing this package registers every backbone, head and (later) video model."""

from models import image  # noqa: F401  (registers backbones and heads)
