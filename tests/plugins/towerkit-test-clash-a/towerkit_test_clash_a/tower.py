import tensorflow as tf

import towerkit


@tf.keras.utils.register_keras_serializable(package="towerkit_test_clash_a")
class BagOfIdsTower(towerkit.Tower):
    """Hashes one id feature into num_bins rows of an embedding table.

    Args:
        feature: The id feature key.
        num_bins: Rows of the embedding table.
        embedding_dim: Width of the embeddings.
    """

    def __init__(self, feature="user_id", num_bins=256, embedding_dim=32, **kwargs):
        super().__init__(embedding_dim=embedding_dim, **kwargs)
        self.feature = feature
        self.num_bins = towerkit.check_positive_int(num_bins, "num_bins")
        self.hashing = tf.keras.layers.Hashing(num_bins)
        self.embedding = tf.keras.layers.Embedding(num_bins, embedding_dim)

    @property
    def feature_keys(self):
        return (self.feature,)

    def call(self, features):
        return self.embedding(self.hashing(self.select(features)[self.feature]))

    def get_config(self):
        return {**super().get_config(), "feature": self.feature, "num_bins": self.num_bins}
