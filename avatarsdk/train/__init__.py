"""Training of the paper's synthesis network G (Sec. 3.1) and its data set (Sec. 3.2).

* :mod:`avatarsdk.train.data`: ``avatarsdk data build`` -- sharded (albedo,
  offsets) UV maps from synthetic heads (ICT identity + detail beyond the PCA
  span + procedural albedo) and from fitted avatars (the bootstrap's
  ``add_fitted``), the :class:`~avatarsdk.train.data.UVDataset` reader and the
  markdown datasheet.
* :mod:`avatarsdk.train.gan`: ``avatarsdk train gan`` -- StyleGAN2 training of G
  against the three discriminators (non-saturating loss, lazy R1, style mixing,
  EMA generator), resumable checkpoints, ``stats.jsonl``, and a coverage /
  diversity figure for a trained G.

Nothing here is imported by the inference path.
"""

from avatarsdk.train.data import (
    DataConfig,
    DatasetWriter,
    Sample,
    UVDataset,
    build_dataset,
    load_fitted,
    synthetic_sample,
    write_datasheet,
)
from avatarsdk.train.gan import (
    Coverage,
    TrainConfig,
    TrainResult,
    coverage_from_features,
    coverage_stats,
    map_features,
    train_gan,
)

__all__ = [
    "Coverage",
    "DataConfig",
    "DatasetWriter",
    "Sample",
    "TrainConfig",
    "TrainResult",
    "UVDataset",
    "build_dataset",
    "coverage_from_features",
    "coverage_stats",
    "load_fitted",
    "map_features",
    "synthetic_sample",
    "train_gan",
    "write_datasheet",
]
