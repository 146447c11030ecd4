"""CT-CHAT prompt strings, character for character as upstream's GUI + conversation.py produce them."""

from __future__ import annotations

import pytest

from engine.chat.prompts import chat_messages, guardrail_text, llama3_system, render_prompt

SYS = llama3_system()
U = "<|start_header_id|>user<|end_header_id|>\n\n"
A = "<|start_header_id|>assistant<|end_header_id|>\n\n"
EOT = "<|eot_id|>"


def test_system_string_is_the_verbatim_guardrail() -> None:
    assert len(SYS) == 2140
    assert SYS.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n. You are CT-CHAT")
    text = guardrail_text()
    assert "“Please provide the CT volume.”" in text and "non-spesific" in text
    assert text.endswith("respond appropriately.")


def test_first_turn_with_a_volume_and_a_mode() -> None:
    prompt = render_prompt([{"role": "user", "content": "Is there a pleural effusion?", "mode": "long_answer"}],
                           has_image=True)
    assert prompt == SYS + EOT + U + "<image>\n<provided>Is there a pleural effusion? <long_answer>" + EOT + A


def test_short_answer_keeps_the_text_not_the_misspelt_token() -> None:
    prompt = render_prompt([{"role": "user", "content": "Nodule?", "mode": "short_answer"}], has_image=True)
    assert prompt.endswith("<provided>Nodule? <short_answer>" + EOT + A)


def test_later_turns_have_no_second_image_and_keep_their_modes() -> None:
    messages = [
        {"role": "user", "content": "Describe the lungs.", "mode": None},
        {"role": "assistant", "content": "Both lungs are clear."},
        {"role": "user", "content": "Write the report.", "mode": "report_generation"},
    ]
    prompt = render_prompt(messages, has_image=True)
    assert prompt == (SYS + EOT + U + "<image>\n<provided>Describe the lungs." + EOT + A + "Both lungs are clear." + EOT
                      + U + "Write the report. <report_generation>" + EOT + A)
    turns = prompt.removeprefix(SYS)
    assert turns.count("<image>") == 1 and turns.count("<provided>") == 1


def test_without_a_volume_no_image_no_provided_but_the_mode_stays() -> None:
    prompt = render_prompt([{"role": "user", "content": "Any nodules?", "mode": "multiple_choice"}], has_image=False)
    assert prompt == SYS + EOT + U + "Any nodules? <multiple_choice>" + EOT + A


def test_mistral_and_vicuna_templates() -> None:
    messages = [{"role": "user", "content": "Q1", "mode": None}, {"role": "assistant", "content": "R1"},
                {"role": "user", "content": "Q2", "mode": "short_answer"}]
    assert render_prompt(messages, has_image=True, family="mistral_instruct") == (
        "[INST] <image>\n<provided>Q1 [/INST] R1 </s>[INST] Q2 <short_answer> [/INST]")
    assert render_prompt(messages, has_image=False, family="vicuna_v1") == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Q1 ASSISTANT: R1</s>USER: Q2 <short_answer> "
        "ASSISTANT:")


def test_chat_messages_for_other_models_carry_the_same_guardrail_and_edits() -> None:
    out = chat_messages([{"role": "user", "content": "Findings?", "mode": "report_generation"}], has_image=True)
    assert out[0] == {"role": "system", "content": guardrail_text()}
    assert out[1] == {"role": "user", "content": "<image>\n<provided>Findings? <report_generation>"}


@pytest.mark.parametrize(
    "messages",
    [[], [{"role": "assistant", "content": "hi"}], [{"role": "user", "content": "a", "mode": "essay"}],
     [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]],
)
def test_malformed_conversations_are_rejected(messages) -> None:
    with pytest.raises(ValueError):
        render_prompt(messages, has_image=False)
