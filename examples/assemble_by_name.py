"""Assemble, train, evaluate and query a two-tower model by name, in code.

Usage: python examples/assemble_by_name.py [DATASET]   (default movielens-100k; try synthetic)
"""

import sys

import towerkit  # import first: it selects Keras 2 for TFRS
import tensorflow as tf

from towerkit.embedding import embed


def main(dataset: str = "movielens-100k") -> None:
    data = towerkit.load_dataset(dataset)
    model = towerkit.assemble(
        query="user",  # a registered name,
        candidate={"name": "movie", "embedding_dim": 32},  # a name plus config,
        task=towerkit.create_task("retrieval", logq_correction=True),  # or a built object
        data=data,  # towers adapt their vocabularies; feature keys are checked
        style="tfrs",  # or "train_step": a plain Keras model with the same metrics
    )
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    train = tf.data.Dataset.from_tensor_slices(data.train_features(model.feature_keys)).batch(8192)
    model.fit(train, epochs=3, verbose=0)
    print("model     ", towerkit.evaluate_topk(model, data, ks=[10, 100]).format())
    print("popularity", towerkit.popularity_topk(data, ks=[10, 100]).format())

    index = towerkit.create_index("brute-force", query_model=model.query_tower, k=3)
    index.index(embed(model.candidate_tower, {"movie_title": data.candidate_ids}),
                identifiers=tf.constant(data.candidate_ids))
    user = str(data.interactions["user_id"][0])
    _, titles = index(tf.constant([user]))
    print(f"top 3 for user {user}:", [t.decode() for t in titles[0].numpy()])


if __name__ == "__main__":
    main(*sys.argv[1:])
