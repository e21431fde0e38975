"""Multi-label topic sentences made from word lists that installed packages ship (nothing is downloaded).

Topics: the cities of the IANA time zone database by region (the `tzdata` package: Africa, America,
Asia, Europe, Australia + Pacific as oceania) and colour names (Pillow's ImageColor, a core dependency).
Filler: scikit-learn's English stop words. A sentence names one to three topics with one or two words
each among filler words; its labels are the topics it names. Token ids: 0 [PAD], 1 [CLS], 2 [SEP],
3 [UNK], then the filler words, then the topic words; every sentence is [CLS] words [SEP] [PAD]...
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
PAD, CLS, SEP = 0, 1, 2
LENGTH = 20  # tokens per row, [CLS] and [SEP] included
REGIONS = {"africa": ("Africa",), "america": ("America",), "asia": ("Asia",), "europe": ("Europe",),
           "oceania": ("Australia", "Pacific")}
TOPICS = [*REGIONS, "colours"]


@dataclass(frozen=True)
class Vocabulary:
    words: list[str]  # id -> word
    filler: np.ndarray  # ids of the filler words
    topics: list[np.ndarray]  # per topic, the ids of its words


def _cities(folders: tuple[str, ...]) -> list[str]:
    root = resources.files("tzdata").joinpath("zoneinfo")
    names = [entry.name for folder in folders for entry in root.joinpath(folder).iterdir() if entry.is_file()]
    return sorted({name.lower() for name in names if name.replace("_", "").isalpha()})


def _colours() -> list[str]:
    from PIL import ImageColor

    return sorted(name for name in ImageColor.colormap if name.isalpha() and "grey" not in name)


@cache
def vocabulary() -> Vocabulary:
    """The word lists, deduplicated (a word in two lists stays with the first)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    words = list(SPECIALS)
    filler = sorted(ENGLISH_STOP_WORDS)
    seen = set(filler)
    words.extend(filler)
    topic_ids = []
    for topic_words in [*(_cities(folders) for folders in REGIONS.values()), _colours()]:
        fresh = [word for word in topic_words if word not in seen]
        seen.update(fresh)
        topic_ids.append(np.arange(len(words), len(words) + len(fresh)))
        words.extend(fresh)
    return Vocabulary(words, np.arange(len(SPECIALS), len(SPECIALS) + len(filler)), topic_ids)


@dataclass(frozen=True)
class TextSplit:
    ids_train: np.ndarray
    mask_train: np.ndarray
    y_train: np.ndarray
    ids_test: np.ndarray
    mask_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]


def sentences(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids [count, LENGTH] int64, attention_mask [count, LENGTH] int64, labels [count, 6] int8)."""
    vocab = vocabulary()
    ids = np.full((count, LENGTH), PAD, dtype=np.int64)
    mask = np.zeros((count, LENGTH), dtype=np.int64)
    y = np.zeros((count, len(TOPICS)), dtype=np.int8)
    for row in range(count):
        chosen = rng.choice(len(TOPICS), size=rng.integers(1, 4), replace=False)
        words = [int(word) for topic in chosen for word in rng.choice(vocab.topics[topic], size=rng.integers(1, 3))]
        words += [int(word) for word in rng.choice(vocab.filler, size=rng.integers(6, LENGTH - 2 - len(words) + 1))]
        rng.shuffle(words)
        tokens = [CLS, *words, SEP]
        ids[row, :len(tokens)] = tokens
        mask[row, :len(tokens)] = 1
        y[row, chosen] = 1
    return ids, mask, y


@cache
def topic_sentences(train: int = 6000, test: int = 500) -> TextSplit:
    """Training and held-out sentences, drawn from separate seeds."""
    ids_train, mask_train, y_train = sentences(train, np.random.default_rng(0))
    ids_test, mask_test, y_test = sentences(test, np.random.default_rng(1))
    return TextSplit(ids_train, mask_train, y_train, ids_test, mask_test, y_test, list(TOPICS))


def decode(ids: np.ndarray) -> str:
    """A row of token ids as text (the words, [PAD] dropped)."""
    words = vocabulary().words
    return " ".join(words[int(i)] for i in ids if int(i) != PAD)
