"""The options every id-based tower factory shares, declared and forwarded in one place.

``user``, ``movie`` and ``item-query`` all embed one id feature, and so take
the same six options: ``vocabulary``, ``embedding_dim``, ``feature``, ``l2``,
``num_oov_buckets`` and ``name``. :func:`id_tower_factory` adds them to a
factory's signature (which recipe validation and ``towerkit describe`` read)
and hands them over as one :class:`IdOptions`, which builds the id tower, so
no factory can forget to forward one.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from towerkit.towers.feature_tower import FeatureTower
from towerkit.towers.id_embedding import IdEmbeddingTower

SHARED_OPTIONS = ("vocabulary", "embedding_dim", "feature", "l2", "num_oov_buckets", "name")


@dataclass(frozen=True)
class IdOptions:
    """The shared options of an id-based tower, as given to its factory."""

    feature: str
    name: str
    vocabulary: Sequence[str] | None = None
    embedding_dim: int = 32
    l2: float = 0.0
    num_oov_buckets: int = 1

    def id_tower(self, item_bias: bool = False) -> IdEmbeddingTower:
        """The plain tower: StringLookup then Embedding of the id (plus a per-id bias column with ``item_bias``)."""
        return IdEmbeddingTower(self.feature, self.vocabulary, self.embedding_dim, self.num_oov_buckets,
                                l2=self.l2, item_bias=item_bias, name=self.name)

    def feature_tower(self, **parts: Any) -> FeatureTower:
        """The id embedding plus side features; ``parts`` are FeatureTower's other options."""
        return FeatureTower(self.feature, self.vocabulary, self.embedding_dim, l2=self.l2,
                            num_oov_buckets=self.num_oov_buckets, name=self.name, **parts)


def _shared_parameters(feature: str, name: str) -> tuple[list[inspect.Parameter], list[inspect.Parameter]]:
    """The shared options as signature parameters: those that come first, and those that come last."""
    def option(option_name: str, default: Any, annotation: str) -> inspect.Parameter:
        return inspect.Parameter(option_name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                 annotation=annotation)

    first = [option("vocabulary", None, "Sequence[str] | None"), option("embedding_dim", 32, "int"),
             option("feature", feature, "str")]
    last = [option("l2", 0.0, "float"), option("num_oov_buckets", 1, "int"), option("name", name, "str")]
    return first, last


def _shared_docs(ids: str) -> dict[str, str]:
    return {
        "vocabulary": f"Known {ids}; learned from the data at assembly if omitted.",
        "embedding_dim": "Width of the embeddings (and of the output, unless the tower projects).",
        "feature": f"The feature key holding the {ids}.",
        "l2": "L2 penalty on the id embeddings each batch uses.",
        "num_oov_buckets": f"Embedding rows shared by unknown {ids}.",
        "name": "The layer name.",
    }


def _with_shared_docs(doc: str | None, ids: str) -> str:
    """The factory's docstring with the shared options listed at the top of its ``Args:`` section."""
    doc = inspect.cleandoc(doc or "")
    lines = doc.splitlines()
    entries = [f"    {option}: {text}" for option, text in _shared_docs(ids).items()]
    for index, line in enumerate(lines):
        if line.strip() == "Args:":
            return "\n".join(lines[: index + 1] + entries + lines[index + 1:])
    return "\n".join([doc, "", "Args:", *entries])


def id_tower_factory(feature: str, name: str, ids: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declares a tower factory that takes the shared id options besides its own.

    The decorated function takes an :class:`IdOptions` first, then its own
    keyword options (each with a default). The factory it returns takes
    ``vocabulary, embedding_dim, feature``, then the function's own options,
    then ``l2, num_oov_buckets, name``; its signature and docstring list all of
    them.

    Args:
        feature: The default id feature key.
        name: The default layer name.
        ids: What the ids are, for the docs (e.g. ``"user ids"``).
    """
    def decorate(build: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(build).parameters.values() if p.name != "ids"]
        first, last = _shared_parameters(feature, name)
        signature = inspect.Signature(first + own + last,
                                      return_annotation=inspect.signature(build).return_annotation)

        @functools.wraps(build)
        def factory(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{build.__name__}(): {exc}") from None
            bound.apply_defaults()
            options = dict(bound.arguments)
            shared = IdOptions(**{option: options.pop(option) for option in SHARED_OPTIONS})
            return build(shared, **options)

        factory.__signature__ = signature  # what recipe validation and `towerkit describe` read
        factory.__doc__ = _with_shared_docs(build.__doc__, ids)
        return factory

    return decorate
