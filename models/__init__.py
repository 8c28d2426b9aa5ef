"""Model components. Importing this package registers every backbone, head, video model and provider."""

from models import flow, image, registration, video  # noqa: F401  (each registers its components)
