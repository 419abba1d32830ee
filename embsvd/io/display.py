"""Tokens as people read them: a token's text as its tokenizer decodes it, made visible.

A raw token string is the tokenizer's storage form: byte-level BPE (GPT-2, Llama 3,
SmolLM2) stores bytes as stand-in characters (``Ġstrugg`` for `` strugg``, ``Ċ`` for a
newline, ``Ã¶m`` for ``öm``), SentencePiece marks a word start with ``▁`` and stores
unknown bytes as ``<0xC3>``, WordPiece marks the pieces after a word's first with ``##``.
The display text undoes that with the tokenizer's own decoder, and then shows what is
invisible or ambiguous, one rule for every tokenizer:

- the text is what the token adds to a text it follows: ``Ġthe``, ``▁the`` and
  WordPiece's ``the`` (a word-initial piece) all start with a space, ``##ia`` and a
  non-initial BPE piece ``ia`` do not;
- a space is shown as ``␣`` (so a word-initial token reads ``␣the``, a lone marker ``␣``);
- ``\\n``, ``\\t``, ``\\r``, other control, format and separator characters are escaped
  (``\\x00``, ``\\u200b``), a backslash is doubled and a literal ``␣`` escaped
  (``\\u2423``), so that every shown text stands for one token text;
- bytes that are not whole UTF-8 characters (half of ``ö`` in a byte-level token) are
  shown as ``\\xc3``, never as mojibake or ``�``.

How a tokenizer decodes is read once per checkpoint from its decoder
(:func:`token_decoding`), or guessed from the vocabulary's word-start marker where there
is no decoder (:func:`guess_decoding`); a token's text is then a few string operations.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

from embsvd.io.tokenizer import word_start_marker

SPACE_SHOWN = "␣"  # U+2423 OPEN BOX: how a space (a word start) is shown
WORDPIECE_PREFIX = "##"
BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
ESCAPED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", SPACE_SHOWN: "\\u2423"}
# Unicode categories without a visible glyph: control, format, surrogate, private use,
# unassigned, and the separators other than the plain space
INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"}
# bytes that are not whole UTF-8 characters become these lone surrogates (surrogateescape)
STRAY_BYTES = range(0xDC80, 0xDD00)


def _byte_characters() -> dict[str, int]:
    """Byte-level BPE's stand-in character of every byte (GPT-2's ``bytes_to_unicode``,
    which every byte-level tokenizer shares): printable Latin-1 bytes stand for
    themselves, the other 68 for ``chr(256 + n)`` in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in table.values()]
    table |= {chr(256 + n): b for n, b in enumerate(others)}
    return table


BYTE_OF_CHARACTER = _byte_characters()
# str.translate table: stand-in character -> the Latin-1 character of its byte
_TO_LATIN1 = {ord(ch): b for ch, b in BYTE_OF_CHARACTER.items()}


class Step(NamedTuple):
    """One step of a decoder, applied to a single token's text."""

    kind: str  # byte_level, byte_fallback, replace, wordpiece
    pattern: str = ""  # replace: the string replaced; wordpiece: the continuation prefix
    content: str = ""  # replace: what replaces it


@dataclass(frozen=True)
class TokenDecoding:
    """How a tokenizer turns one token into text, in the order its decoder does.

    Attributes:
        steps: The decoder's steps that change a single token (byte-level bytes, byte
            fallback ``<0xNN>``, string replacements such as ``▁`` -> space, WordPiece's
            ``##``); steps that only join or trim a whole text (``Fuse``, ``Strip``) are
            left out: a token is shown as it reads in the middle of a text.
        literal: Tokens shown as stored, not decoded: added and special tokens, which a
            tokenizer matches in the raw text, so that their content is their text.
    """

    steps: tuple[Step, ...] = ()
    literal: frozenset[str] = frozenset()

    def decode(self, token: str) -> str:
        """The text ``token`` adds to a text it follows; bytes that are not whole UTF-8
        characters stay as lone surrogates (U+DC80-U+DCFF) for :func:`escape_text`."""
        if token in self.literal:
            return token
        text = token
        for step in self.steps:
            text = _apply(step, text)
        return text


def _apply(step: Step, text: str) -> str:
    if step.kind == "byte_level":
        if any(ch not in BYTE_OF_CHARACTER for ch in text):
            return text  # not a byte-level token (an added token the model table lacks)
        return text.translate(_TO_LATIN1).encode("latin-1").decode("utf-8", "surrogateescape")
    if step.kind == "byte_fallback":
        found = BYTE_FALLBACK.fullmatch(text)
        return bytes([int(found[1], 16)]).decode("utf-8", "surrogateescape") if found else text
    if step.kind == "replace":
        return text.replace(step.pattern, step.content)
    if step.kind == "wordpiece":
        # a piece after a word's first drops its prefix; any other piece starts a word
        if text.startswith(step.pattern) and len(text) > len(step.pattern):
            return text[len(step.pattern) :]
        return " " + text
    raise AssertionError(f"unknown decoding step {step.kind!r}")


def escape_text(text: str) -> str:
    """Decoded token text made visible: spaces as ``␣``, invisible characters and stray
    bytes as escapes (``\\n``, ``\\x00``, ``\\xc3``, ``\\u200b``), a backslash doubled."""
    if "\\" not in text and SPACE_SHOWN not in text:
        spaced = text.replace(" ", SPACE_SHOWN)
        if spaced.isprintable():
            return spaced  # most tokens: at most a space to show
    return "".join(_escape_character(ch) for ch in text)


def _escape_character(ch: str) -> str:
    if ch == " ":
        return SPACE_SHOWN
    if ch in ESCAPED:
        return ESCAPED[ch]
    code = ord(ch)
    if code in STRAY_BYTES:
        return f"\\x{code - 0xDC00:02x}"
    if unicodedata.category(ch) not in INVISIBLE:
        return ch
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def display_text(token: str | None, decoding: TokenDecoding) -> str:
    """``token`` as people read it (see the module's docstring): decoded as its tokenizer
    does (``decoding``, from :func:`token_decoding`), then made visible by
    :func:`escape_text`; ``""`` for ``None`` (a row the tokenizer lacks)."""
    return "" if token is None else escape_text(decoding.decode(token))


class DisplayTexts(Sequence[str]):
    """:func:`display_text` of every token, computed on first use and then kept: what a
    vocabulary's texts are handed to another process as (the figure process writes a
    large vocabulary's explorer), so that the process that hands them over does not
    compute them (0.16 s at 128k tokens). Pickles as its tokens and decoding."""

    def __init__(self, tokens: Sequence[str | None], decoding: TokenDecoding):
        self.tokens, self.decoding = tuple(tokens), decoding

    @cached_property
    def texts(self) -> tuple[str, ...]:
        return tuple(display_text(token, self.decoding) for token in self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index):  # type: ignore[override]
        return self.texts[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self.texts)

    def __reduce__(self):
        return DisplayTexts, (self.tokens, self.decoding)


# --- reading a tokenizer's decoder ------------------------------------------------------------


def token_decoding(tokenizer: Any) -> TokenDecoding:
    """How ``tokenizer`` decodes a token, read from its decoder once per checkpoint.

    ``tokenizer`` is an ``embsvd.io.tokenizer.FastTokenizer``, a ``transformers`` fast
    tokenizer (both hold a ``tokenizers.Tokenizer``) or a slow ``transformers`` one;
    without a ``tokenizers`` decoder the decoding is guessed from the vocabulary
    (:func:`guess_decoding`).
    """
    from tokenizers import Tokenizer

    # FastTokenizer.backend; transformers' fast tokenizers name theirs backend_tokenizer
    # (and use ``backend`` for the name of their kind)
    backends = [getattr(tokenizer, key, None) for key in ("backend", "backend_tokenizer")]
    backend = next((b for b in backends if isinstance(b, Tokenizer)), None)
    if backend is None or backend.decoder is None:
        if getattr(tokenizer, "byte_decoder", None):  # transformers' slow GPT-2 tokenizer
            return TokenDecoding((Step("byte_level"),), _added_tokens(tokenizer))
        vocab = tokenizer.get_vocab()
        return guess_decoding(vocab, word_start_marker(vocab), literal=_added_tokens(tokenizer))
    steps = tuple(_steps(json.loads(backend.decoder.__getstate__())))
    added = backend.get_added_tokens_decoder().values()
    return TokenDecoding(steps, frozenset(token.content for token in added))


def _steps(spec: dict) -> Iterable[Step]:
    """The single-token steps of a ``tokenizers`` decoder's JSON (a ``Sequence`` is
    flattened in order); decoders that only join or trim whole texts add none."""
    kind = spec.get("type")
    if kind == "Sequence":
        for inner in spec.get("decoders", []):
            yield from _steps(inner)
    elif kind == "ByteLevel":
        yield Step("byte_level")
    elif kind == "ByteFallback":
        yield Step("byte_fallback")
    elif kind == "Metaspace":
        yield Step("replace", spec.get("replacement", "▁"), " ")
    elif kind == "Replace" and "String" in spec.get("pattern", {}):
        yield Step("replace", spec["pattern"]["String"], spec.get("content", ""))
    elif kind == "WordPiece":
        yield Step("wordpiece", spec.get("prefix", WORDPIECE_PREFIX))
    elif kind == "BPEDecoder":  # an end-of-word suffix (CLIP's </w>) reads as a space
        yield Step("replace", spec.get("suffix", "</w>"), " ")


def guess_decoding(
    token_strings: Iterable[str | None], marker: str | None, literal: Iterable[str] = ()
) -> TokenDecoding:
    """The decoding a vocabulary implies, where no tokenizer decoder says it: byte-level
    BPE for the marker ``Ġ``; SentencePiece for ``▁`` (with byte fallback where the
    vocabulary holds ``<0x00>``-style tokens); WordPiece where pieces start with ``##``;
    else tokens read as stored."""
    tokens = [t for t in token_strings if t is not None]
    if marker == "Ġ":
        steps: tuple[Step, ...] = (Step("byte_level"),)
    elif marker == "▁":
        fallback = (Step("byte_fallback"),) if "<0x00>" in tokens else ()
        steps = (Step("replace", "▁", " "), *fallback)
    elif any(t.startswith(WORDPIECE_PREFIX) and len(t) > 2 for t in tokens):
        steps = (Step("wordpiece", WORDPIECE_PREFIX),)
    else:
        steps = ()
    return TokenDecoding(steps, frozenset(literal))


def _added_tokens(tokenizer: Any) -> frozenset[str]:
    """A slow ``transformers`` tokenizer's added and special tokens."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special = getattr(tokenizer, "all_special_tokens", []) or []
    return frozenset([str(token) for token in added.values()] + list(special))
