"""The layout of an export directory, shared by the writer (export.py) and the reader (serving/).

Kept free of TensorFlow so that anything may import it cheaply.
"""

METADATA_FILE = "towerkit.json"
# Written beside the model by `towerkit train`, read by `towerkit recommend`.
SEEN_FILE = "seen.json"
QUERY_VOCABULARY_FILE = "query_vocabulary.json"
# Known queries' other features as of training's end (e.g. a user's latest history), so that
# serving can answer a known query from its id alone: {"id_feature": KEY, "features": {KEY: {ID: VALUE}}}.
QUERY_FEATURES_FILE = "query_features.json"
# An index backend that is not TensorFlow saves itself here, beside the query SavedModel.
EXTERNAL_INDEX_DIR = "index"
FORMAT_VERSION = 1
