import tensorflow as tf

from towerkit.towers.base import Tower


@tf.keras.utils.register_keras_serializable(package="towerkit_test_hashing")
class HashedIdTower(Tower):
    def __init__(self, feature="user_id", num_bins=1000, embedding_dim=32, **kwargs):
        super().__init__(embedding_dim=embedding_dim, **kwargs)
        self.feature = feature
        self.num_bins = num_bins
        self.hashing = tf.keras.layers.Hashing(num_bins)
        self.embedding = tf.keras.layers.Embedding(num_bins, embedding_dim)

    @property
    def feature_keys(self):
        return (self.feature,)

    def call(self, features):
        return self.embedding(self.hashing(self.select(features)[self.feature]))

    def get_config(self):
        return {**super().get_config(), "feature": self.feature, "num_bins": self.num_bins}
