from towerkit.towers.user import user_tower

print("noisy tower module imported")


def noisy_tower(embedding_dim=8):
    """The user tower, from a module that prints at import.

    Args:
        embedding_dim: Width of the embeddings.
    """
    return user_tower(embedding_dim=embedding_dim)
