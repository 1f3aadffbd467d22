"""FAR: frame-autoregressive video modeling. Importing the package fills every registry."""
from far import data, losses, metrics, models, pipelines, trainers  # noqa: F401  (registration)
