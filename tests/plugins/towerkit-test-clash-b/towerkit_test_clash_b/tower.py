import tensorflow as tf

import towerkit


@tf.keras.utils.register_keras_serializable(package="towerkit_test_clash_b")
class BagOfIdsTower(towerkit.Tower):
    """A tower with one of two common shape mistakes, for towerkit's contract tests.

    Args:
        feature: The id feature key.
        mistake: ``"extra_axis"`` returns ``[batch, 1, embedding_dim]`` (ids kept as
            ``[batch, 1]``); ``"narrow"`` returns ``[batch, 8]`` whatever embedding_dim is.
        embedding_dim: The declared width of the embeddings.
    """

    def __init__(self, feature="user_id", mistake="extra_axis", embedding_dim=32, **kwargs):
        super().__init__(embedding_dim=embedding_dim, **kwargs)
        self.feature = feature
        self.mistake = mistake
        self.hashing = tf.keras.layers.Hashing(64)
        width = 8 if mistake == "narrow" else embedding_dim
        self.embedding = tf.keras.layers.Embedding(64, width)

    @property
    def feature_keys(self):
        return (self.feature,)

    def call(self, features):
        ids = self.hashing(self.select(features)[self.feature])
        if self.mistake == "extra_axis":
            ids = tf.expand_dims(ids, -1)
        return self.embedding(ids)

    def get_config(self):
        return {**super().get_config(), "feature": self.feature, "mistake": self.mistake}
