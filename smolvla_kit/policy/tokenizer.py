"""Tokenizers for the policy: the kit's own tiny one, and SmolVLM's from the Hub.

`nano` trains from scratch on a laptop, so it cannot lean on SmolVLM's 49k-token vocabulary
(that alone would be most of its parameters). Instead the kit ships a small byte-level BPE
tokenizer, `nano_tokenizer.json`, trained on the kit's own task instructions. Because it is
byte-level, *any* string still tokenizes (rare words just fall apart into more pieces).

Regenerate the shipped file with::

    python -m smolvla_kit.policy.tokenizer

Both kinds of tokenizer are wrapped in `TextTokenizer`, which turns a list of task strings into
`(token ids, attention mask)` exactly the way LeRobot's SmolVLA pre-processor does: right
padding, truncation to `max_length`, padding either to `max_length` or to the longest string.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch

from smolvla_kit.errors import HubError, InputError, MissingFile

NANO_TOKENIZER_FILE = Path(__file__).with_name("nano_tokenizer.json")

# Special tokens. The image ones carry SmolVLM's names so that `add_image_special_tokens`
# works the same way with both tokenizers.
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = [PAD_TOKEN, "<fake_token_around_image>", "<global-img>", "<image>", "<end_of_utterance>"]
NANO_VOCAB_SIZE = 640  # upper bound; the small corpus stops BPE at 520 tokens (256 bytes + specials + merges)

COLOURS = ["red", "green", "blue", "yellow"]
OBJECTS = ["cube", "block", "bin", "box", "tray", "target", "ball"]


def _training_corpus() -> list[str]:
    """Sentences the kit's tasks use (every colour/object combination) plus plain English."""
    lines = []
    for c1, c2 in itertools.product(COLOURS, COLOURS):
        lines += [
            f"pick up the {c1} cube and place it in the {c2} bin",
            f"put the {c1} cube in the {c2} bin",
            f"place the {c1} block on the {c2} block",
            f"stack the {c1} cube on the {c2} cube",
            f"move the {c1} cube next to the {c2} cube",
        ]
    for c, obj in itertools.product(COLOURS, OBJECTS):
        lines += [
            f"touch the {c} {obj}",
            f"push the {c} {obj} to the left",
            f"push the {c} {obj} to the right",
            f"grasp the {c} {obj}",
            f"lift the {c} {obj}",
            f"pick the {c} {obj}",
            f"reach for the {c} {obj}",
        ]
    lines += [
        "open the gripper", "close the gripper", "go to the home position", "rest position",
        "move the arm up", "move the arm down", "rotate the wrist", "wave hello", "do nothing",
        "Pick up the cube. Place it in the bin. Then return home.",
        "the quick brown fox jumps over the lazy dog",
        "The Quick Brown Fox Jumps Over The Lazy Dog",
        "0 1 2 3 4 5 6 7 8 9 10 first second third left right front back top bottom",
        "a robot arm with five joints and a gripper, seen from a front and a wrist camera.",
        "Please, could you sort the objects by colour? Thanks!",
    ]
    # Each instruction ends with "\n" at run time (LeRobot's convention), so learn that too.
    return lines + [line + "\n" for line in lines]


def build_nano_tokenizer():
    """Train the byte-level BPE tokenizer used by the `nano` preset (deterministic, ~1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=NANO_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any string tokenizes
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    return tok


class TextTokenizer:
    """Uniform wrapper around a `tokenizers.Tokenizer` or a transformers tokenizer.

    Args:
        source: ``"kit:nano"`` for the shipped tokenizer, a path to a ``tokenizer.json``, or a
            Hugging Face model id / local folder (loaded with ``transformers.AutoTokenizer``).
    """

    def __init__(self, source: str):
        self.source = source
        self._fast = None  # a tokenizers.Tokenizer
        self._hf = None  # a transformers tokenizer
        if source == "kit:nano":
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_file(str(NANO_TOKENIZER_FILE))
        elif source.endswith(".json") and os.path.isfile(source):
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_file(source)
        else:
            self._hf = _load_hf_tokenizer(source)
        if self._fast is not None:
            self.pad_token_id = self._fast.token_to_id(PAD_TOKEN)
            if self.pad_token_id is None:
                raise InputError(f"Tokenizer {source!r} has no {PAD_TOKEN!r} token; the kit needs one for padding.")
        else:
            self.pad_token_id = self._hf.pad_token_id if self._hf.pad_token_id is not None else 0

    @property
    def vocab_size(self) -> int:
        return self._fast.get_vocab_size() if self._fast is not None else len(self._hf)

    def token_id(self, token: str) -> int:
        """Id of a single special token (e.g. ``"<global-img>"``); raises if unknown."""
        tid = self._fast.token_to_id(token) if self._fast is not None else self._hf.convert_tokens_to_ids(token)
        unk = None if self._fast is not None else self._hf.unk_token_id
        if tid is None or (unk is not None and tid == unk):
            raise InputError(f"Tokenizer {self.source!r} has no token {token!r}.")
        return int(tid)

    def __call__(self, texts: list[str], max_length: int, padding: str = "max_length") -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize, truncate to `max_length`, right-pad. Returns ids (B, L) long and mask (B, L) bool."""
        if padding not in ("max_length", "longest"):
            raise InputError(f"pad_language_to must be 'max_length' or 'longest', got {padding!r}")
        if self._hf is not None:
            enc = self._hf(
                texts, max_length=max_length, truncation=True, padding=padding,
                padding_side="right", return_tensors="pt",
            )
            return enc["input_ids"].long(), enc["attention_mask"].bool()
        ids = [enc.ids[:max_length] for enc in self._fast.encode_batch(texts)]
        length = max_length if padding == "max_length" else max(len(i) for i in ids)
        out = torch.full((len(ids), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.bool)
        for row, seq in enumerate(ids):
            out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = True
        return out, mask

    def save(self, directory: str | Path) -> str | None:
        """Write a `tokenizers` tokenizer into a checkpoint folder; returns the file name (or None for Hub ones)."""
        if self._fast is None:
            return None
        self._fast.save(str(Path(directory) / "tokenizer.json"))
        return "tokenizer.json"


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _load_hf_tokenizer(name_or_path: str):
    """Load a transformers tokenizer from a local folder or the Hub cache, failing fast and clearly offline."""
    from transformers import AutoTokenizer

    if os.path.isdir(name_or_path):
        if not any(os.path.isfile(os.path.join(name_or_path, f)) for f in _TOKENIZER_FILES):
            raise MissingFile(
                f"The tokenizer folder {name_or_path} has none of {_TOKENIZER_FILES}: the tokenizer is missing. Copy "
                f"the tokenizer files of the model it belongs to into it (e.g. from the SmolVLM2 Hub repository)."
            )
        return AutoTokenizer.from_pretrained(name_or_path)
    from .checkpoint import hub_offline_error, is_hub_offline

    if is_hub_offline():
        try:
            return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with a clearer message
            raise hub_offline_error(name_or_path, what="tokenizer") from exc
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:  # noqa: BLE001
        raise HubError(
            f"Could not load the tokenizer {name_or_path!r} from the Hugging Face Hub ({exc}). "
            f"Download it on a machine with network access (`huggingface-cli download {name_or_path}`) and "
            f"either copy the Hub cache here or pass the local folder as the tokenizer path."
        ) from exc


if __name__ == "__main__":
    tokenizer = build_nano_tokenizer()
    tokenizer.save(str(NANO_TOKENIZER_FILE))
    print(f"wrote {NANO_TOKENIZER_FILE} ({tokenizer.get_vocab_size()} tokens)")
