"""The data layer: episodes of Omniglot-mini, torchvision image datasets and sine regression.

Imports nothing else from mclstudio but its error type (mclstudio.errors.DataError). See docs/data.md.
"""

from mclstudio.data.episodes import DataError, Episode, EpisodeSpec, ShapeRange, parse_range, parse_shots
from mclstudio.data.sources import OMNIGLOT_MINI_SPLITS, EpisodeSource, ImageSource, get_source

__all__ = ["DataError", "Episode", "EpisodeSpec", "ShapeRange", "parse_range", "parse_shots", "EpisodeSource", "ImageSource", "get_source", "OMNIGLOT_MINI_SPLITS"]
