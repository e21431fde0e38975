"""Token ids as text: an optional HuggingFace `tokenizers` JSON file (`attack --tokenizer FILE`) decodes the
clean and adversarial rows of a token-id run. The `tokenizers` package is not a dependency: without it
the option is refused (exit 2) before any work."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .errors import BadInputError, first_line

Decoder = Callable[[np.ndarray], list[str]]  # token-id rows [N, T] -> one text per row


def load_decoder(path: str | os.PathLike) -> Decoder:
    """The decoder of a tokenizers JSON file (special tokens dropped from the text)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise BadInputError("--tokenizer needs the 'tokenizers' package, which is not installed "
                            "(pip install tokenizers)") from None
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception types on unreadable files
        raise BadInputError(f"cannot read --tokenizer {path}: {first_line(exc)}") from None

    def decode(rows: np.ndarray) -> list[str]:
        return list(tokenizer.decode_batch([[int(i) for i in row] for row in rows], skip_special_tokens=True))

    return decode
