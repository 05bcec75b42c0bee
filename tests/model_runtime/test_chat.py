"""Prompt rendering and token ids against the reference (Llama 2 tokenizer), and the prompt's error paths."""
from __future__ import annotations

import pytest

from model_runtime import IMAGE_SENTINEL, InvalidRequest
from model_runtime.chat import ChatTokenizer, render_chat

from .conftest import FakePrompt

# reference/CXR_LLAVA.md, "Prompt format and token ids": the report prompt, image at index 42.
REFERENCE_IDS = [
    1, 1, 29961, 25580, 29962, 3532, 14816, 29903, 6778, 13, 3492, 526, 263, 8444, 17937, 19915, 29889, 3967, 304,
    6613, 521, 342, 921, 15570, 1967, 322, 1234, 304, 278, 1139, 393, 1404, 8128, 29889, 13, 29966, 829, 14816,
    29903, 6778, 13, 13, -200, 29871, 13, 6113, 263, 17937, 1189, 293, 3461, 373, 278, 2183, 521, 342, 17937, 1946,
    29892, 3704, 2472, 1048, 263, 371, 781, 25101, 29892, 5881, 14910, 387, 14997, 29892, 1136, 17211, 362, 29892,
    9505, 3712, 653, 1226, 2603, 29892, 5644, 3631, 1801, 3958, 29892, 322, 282, 29765, 720, 272, 1165, 29889, 518,
    29914, 25580, 29962,
]


def test_render_chat_is_the_llama2_first_turn():
    assert render_chat("SYS", "  <image>\nQ?\n") == "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\n<image>\nQ? [/INST]"


def test_report_prompt_ids_equal_the_98_reference_ids(llama2_tokenizer_dir, report_prompt):
    tok = ChatTokenizer(llama2_tokenizer_dir / "tokenizer.model", legacy=False)
    ids = tok.encode_prompt(report_prompt)
    assert ids == REFERENCE_IDS
    assert len(ids) == 98 and ids.index(IMAGE_SENTINEL) == 42


def test_legacy_true_changes_only_index_2(llama2_tokenizer_dir, report_prompt):
    tok = ChatTokenizer(llama2_tokenizer_dir / "tokenizer.model", legacy=True)
    ids = tok.encode_prompt(report_prompt)
    assert [(i, a) for i, (a, b) in enumerate(zip(ids, REFERENCE_IDS)) if a != b] == [(2, 518)]


def test_yes_no_answer_tokens_are_single_pieces(llama2_tokenizer_dir):
    tok = ChatTokenizer(llama2_tokenizer_dir / "tokenizer.model", legacy=False)
    assert (tok.answer_token_id("Yes"), tok.answer_token_id("No")) == (3869, 1939)  # "▁Yes", "▁No"


def test_decode_skips_special_tokens(llama2_tokenizer_dir):
    tok = ChatTokenizer(llama2_tokenizer_dir / "tokenizer.model", legacy=False)
    ids = tok.encode("No pneumothorax.", add_bos=True) + [tok.eos_id]
    assert tok.decode(ids) == "No pneumothorax."


def test_prompt_without_image_placeholder_is_rejected(llama2_tokenizer_dir):
    tok = ChatTokenizer(llama2_tokenizer_dir / "tokenizer.model")
    with pytest.raises(InvalidRequest, match=r"prompt 'q' version 'v1' must hold the <image> placeholder exactly "
                                             r"once, in the user text; found none"):
        tok.encode_prompt(FakePrompt("q", "v1", "sys", "Is there a pneumothorax?"))


def test_prompt_with_two_placeholders_is_rejected(llama2_tokenizer_dir):
    tok = ChatTokenizer(llama2_tokenizer_dir / "tokenizer.model")
    with pytest.raises(InvalidRequest, match="found 2 in the user text"):
        tok.encode_prompt(FakePrompt("q", "v1", "sys", "<image><image>\nWhat?"))


def test_object_that_is_not_a_prompt_is_rejected(llama2_tokenizer_dir):
    tok = ChatTokenizer(llama2_tokenizer_dir / "tokenizer.model")
    with pytest.raises(InvalidRequest, match="prompt must have string attributes id, version, system, user"):
        tok.encode_prompt("<image>\nhello")
