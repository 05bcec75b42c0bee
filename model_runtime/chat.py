"""Llama 2 chat rendering and tokenisation, exactly as the original prepared CXR-LLAVA prompts.

The checkpoint ships no chat template and transformers 5 has no default one, so the template
transformers' old default Llama template rendered is reproduced here. Tokenisation uses
SentencePiece directly with the slow ``LlamaTokenizer`` semantics (``legacy`` as the checkpoint's
tokenizer_config says), so the ids do not depend on the installed transformers version.
"""
from __future__ import annotations

import re
from pathlib import Path

from model_runtime.errors import InvalidRequest, ModelLoadError
from model_runtime.types import IMAGE_SENTINEL, PromptLike

IMAGE_PLACEHOLDER = "<image>"
SPIECE_UNDERLINE = "\u2581"
BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_SPECIAL_SPLIT = re.compile(r"(<s>|</s>|<unk>)")


def render_chat(system: str, user: str) -> str:
    """First user turn of the Llama 2 chat format: ``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST]``."""
    return f"{BOS}[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user.strip()} [/INST]"


def check_prompt(prompt: PromptLike) -> None:
    """Raise InvalidRequest unless the prompt's user text holds ``<image>`` exactly once (and the system none)."""
    for attr in ("id", "version", "system", "user"):
        if not isinstance(getattr(prompt, attr, None), str):
            raise InvalidRequest(
                f"prompt must have string attributes id, version, system, user (prompts.Prompt); "
                f"{type(prompt).__name__} lacks {attr!r}"
            )
    count = prompt.user.count(IMAGE_PLACEHOLDER)
    if count != 1 or IMAGE_PLACEHOLDER in prompt.system:
        found = "none" if count == 0 else f"{count} in the user text"
        if IMAGE_PLACEHOLDER in prompt.system:
            found += " and one in the system text"
        raise InvalidRequest(
            f"prompt {prompt.id!r} version {prompt.version!r} must hold the {IMAGE_PLACEHOLDER} placeholder exactly "
            f"once, in the user text; found {found}"
        )


class ChatTokenizer:
    """The checkpoint's SentencePiece tokenizer with slow ``LlamaTokenizer`` semantics.

    Parameters
    ----------
    model_file : path to ``tokenizer.model``
    legacy : bool
        transformers' ``legacy`` flag (tokenizer_config.json). With ``False`` (the released checkpoint) text
        right after a special token gets no ``▁`` prefix: ``<s>[INST]`` -> 1, 29961 rather than 1, 518.
    """

    def __init__(self, model_file: str | Path, legacy: bool = False):
        try:  # imported here so the engine imports without sentencepiece (benchmarks with fixed ids)
            import sentencepiece as spm
            from sentencepiece import sentencepiece_model_pb2
        except ImportError as exc:
            raise ModelLoadError("the tokenizer needs sentencepiece and protobuf: "
                                 "`pip install 'sentencepiece>=0.2' protobuf`") from exc
        model_file = Path(model_file)
        try:
            proto_bytes = model_file.read_bytes()
            self._sp = spm.SentencePieceProcessor(model_proto=proto_bytes)
        except (OSError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot read the SentencePiece tokenizer {model_file}: {exc}") from exc
        self.legacy = legacy
        if legacy:
            self._sp_text = self._sp
        else:
            # As slow LlamaTokenizer(legacy=False): same model with the dummy prefix turned off.
            proto = sentencepiece_model_pb2.ModelProto()
            proto.ParseFromString(proto_bytes)
            proto.normalizer_spec.add_dummy_prefix = False
            self._sp_text = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
            self._unk_len = len(self._sp_text.encode(UNK, out_type=str))
        self.bos_id = self._sp.bos_id()
        self.eos_id = self._sp.eos_id()
        self.unk_id = self._sp.unk_id()
        self.vocab_size = self._sp.get_piece_size()
        self._special = {BOS: self.bos_id, EOS: self.eos_id, UNK: self.unk_id}

    # -- encoding ---------------------------------------------------------------------------------
    def _encode_segment(self, text: str) -> list[int]:
        if not text:
            return []
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return self._sp_text.encode(text)
        # Leading "▁" kept verbatim: encode "<unk>" + text and drop the "<unk>" pieces (transformers' trick).
        return self._sp_text.encode(UNK + text)[self._unk_len:]

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Text (may contain the literals ``<s>``, ``</s>``) -> ids, as ``LlamaTokenizer(text).input_ids``."""
        if not self.legacy:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        parts = [p for p in _SPECIAL_SPLIT.split(text)]
        ids: list[int] = [self.bos_id] if add_bos else []
        for i, part in enumerate(parts):
            if part in self._special:
                ids.append(self._special[part])
            elif not self.legacy and i == 0 and part == SPIECE_UNDERLINE and len(parts) > 1:
                continue  # a lone prefix before a special token is dropped (LlamaTokenizer.tokenize)
            else:
                ids.extend(self._encode_segment(part))
        return ids

    def encode_prompt(self, prompt: PromptLike) -> list[int]:
        """Render the chat and tokenise it per chunk around ``<image>``: ids with one ``-200`` image sentinel.

        Each chunk is tokenised with BOS; the first chunk keeps it, the others drop it. Because the rendered
        text starts with the literal ``<s>``, the ids start ``1, 1`` (double BOS, as the original).

        Raises
        ------
        InvalidRequest
            The prompt's user text does not hold ``<image>`` exactly once.
        """
        check_prompt(prompt)
        chunks = render_chat(prompt.system, prompt.user).split(IMAGE_PLACEHOLDER)
        ids: list[int] = []
        for i, chunk in enumerate(chunks):
            chunk_ids = self.encode(chunk)
            if i > 0:
                ids.append(IMAGE_SENTINEL)
                chunk_ids = chunk_ids[1:]
            ids.extend(chunk_ids)
        return ids

    def answer_token_id(self, word: str) -> int:
        """Id of the first token of ``word`` as the first word of an answer (``" Yes"`` -> ``▁Yes``)."""
        ids = [i for i in self._sp.encode(word) if self._sp.id_to_piece(i) != SPIECE_UNDERLINE]
        if not ids:
            raise InvalidRequest(f"the tokenizer cannot encode {word!r}")
        return ids[0]

    # -- decoding ---------------------------------------------------------------------------------
    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        """Ids -> text, special tokens skipped, surrounding whitespace stripped."""
        keep = [i for i in ids if 0 <= i < self.vocab_size and not self._sp.is_control(i) and i != self.unk_id]
        return self._sp.decode(keep).strip()
