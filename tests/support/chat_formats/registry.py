"""The families: which template, which real vocabulary, which tokens, and what each format supports.

Every entry is a fact about a published format (read with the sources named in its template file), not about
feedline. ``closers`` are the strings that end an assistant turn in that format (an empty tuple: the format writes
none). The capability flags tell the conversation generator what the template accepts, so every generated row is
one the template renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["CLASSES", "FAMILIES", "Family", "family"]

TEMPLATES = Path(__file__).parent / "families"

CLASSES: dict[int, str] = {
    1: "generation prompt = history header + forced prefix",
    2: "role-less; generation prompt differs from the history header in whitespace",
    3: "last assistant turn closes differently (or not at all)",
    4: "every render ends with text that is not the last turn's (eos, or the generation prompt itself)",
    5: "renders only with tools",
    6: "tool-call arguments rendered as objects (tojson / items) or empty reasoning_content",
    7: "generation blocks with a role header, not one-to-one, or not covering the closer",
    8: "renders today's date (strftime_now)",
}

_LLAMA3 = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
)
_DEEPSEEK = (
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>",
    "<｜tool▁sep｜>",
)
_CHATML = ("<|im_start|>", "<|im_end|>")
_GEMMA = ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>")


@dataclass(frozen=True)
class Family:
    """One published chat format, paired with a real vocabulary.

    base: the built-in vocabulary (``qwen2.5``, ``qwen3``, ``mistral-7b-v3``, ``mistral-nemo`` from feedline's
    built-ins; ``mistral-v1``: Mistral 7B v0.1's SentencePiece model from mistral-common, the Llama-2-style 32k
    vocabulary). added: tokens the format needs that the vocabulary lacks, added as special tokens.
    """

    name: str
    model: str  # the public model whose format the template reproduces
    base: str
    closers: tuple[str, ...]
    classes: tuple[int, ...] = ()
    bos: str | None = None
    eos: str | None = None
    added: tuple[str, ...] = ()
    system: bool = True
    tools: bool = False  # accepts a tool list
    tool_calls: bool = False  # assistant tool calls and tool results
    tool_arguments: str = "object"  # "object": dict arguments; "string": the template concatenates a JSON string
    tool_call_content: bool = True  # tool-call turns may carry text
    single_tool_call: bool = False
    requires_tools: bool = False
    reasoning: bool = False  # renders reasoning_content
    source: str = ""

    @property
    def template_path(self) -> Path:
        return TEMPLATES / f"{self.name}.jinja"

    @property
    def template(self) -> str:
        return self.template_path.read_text(encoding="utf-8")


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "chatml_qwen2_5",
            "Qwen2.5-Instruct",
            "qwen2.5",
            ("<|im_end|>",),
            (6,),
            tools=True,
            tool_calls=True,
            source="Qwen2.5-Instruct tokenizer_config chat_template (chujiezheng/chat_templates qwen2.5-instruct)",
        ),
        Family(
            "qwen3",
            "Qwen3",
            "qwen3",
            ("<|im_end|>",),
            (6,),
            tools=True,
            tool_calls=True,
            reasoning=True,
            source="Qwen3 tokenizer_config chat_template (tyler-griggs/SkyRL templates README)",
        ),
        Family(
            "qwq",
            "QwQ-32B",
            "qwen3",
            ("<|im_end|>",),
            (1, 6),
            tools=True,
            tool_calls=True,
            source="QwQ-32B tokenizer_config chat_template",
        ),
        Family(
            "deepseek_r1",
            "DeepSeek-R1-Distill-Qwen-32B",
            "qwen2.5",
            ("<｜end▁of▁sentence｜>",),
            (1,),
            bos="<｜begin▁of▁sentence｜>",
            eos="<｜end▁of▁sentence｜>",
            added=_DEEPSEEK + ("<think>", "</think>"),
            tools=True,
            tool_calls=True,
            tool_arguments="string",
            tool_call_content=False,
            source="ggml-org/llama.cpp models/templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        ),
        Family(
            "deepseek_v3",
            "DeepSeek-V3",
            "qwen2.5",
            ("<｜end▁of▁sentence｜>",),
            (),
            bos="<｜begin▁of▁sentence｜>",
            eos="<｜end▁of▁sentence｜>",
            added=_DEEPSEEK,
            tools=True,
            tool_calls=True,
            tool_arguments="string",
            source="ggml-org/llama.cpp models/templates/deepseek-ai-DeepSeek-V3.1.jinja (V3 layout)",
        ),
        Family(
            "olmo3_think",
            "OLMo-3-Think",
            "qwen2.5",
            ("<|im_end|>", "<|endoftext|>"),
            (1, 3),
            eos="<|endoftext|>",
            source="allenai/open-instruct dataset_transformation.py CHAT_TEMPLATES['olmo_thinker']",
        ),
        Family(
            "olmo2",
            "OLMo-2-Instruct / Tulu 3",
            "qwen2.5",
            ("<|endoftext|>",),
            (3,),
            bos="<|endoftext|>",
            eos="<|endoftext|>",
            source="allenai/open-instruct dataset_transformation.py CHAT_TEMPLATES['tulu']",
        ),
        Family(
            "hermes_tool_use",
            "Hermes-2-Pro-Mistral-7B (tool_use)",
            "mistral-v1",
            ("<|im_end|>",),
            (5, 6),
            bos="<s>",
            eos="<|im_end|>",
            added=_CHATML,
            tools=True,
            tool_calls=True,
            requires_tools=True,
            source="NousResearch/Hermes-Function-Calling README; vLLM tool_chat_template_hermes.jinja",
        ),
        Family(
            "phi3_5",
            "Phi-3.5-mini-instruct",
            "mistral-v1",
            ("<|end|>",),
            (4,),
            bos="<s>",
            eos="<|endoftext|>",
            added=("<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>"),
            source="ggml-org/llama.cpp models/templates/microsoft-Phi-3.5-mini-instruct.jinja",
        ),
        Family(
            "phi4",
            "Phi-4",
            "qwen2.5",
            ("<|im_end|>",),
            (),
            eos="<|im_end|>",
            added=("<|im_sep|>",),
            source="microsoft/phi-4 tokenizer_config chat_template (PHI4 constants in public code)",
        ),
        Family(
            "phi4_mini_tagged",
            "Phi-4-mini-instruct, tagged for assistant masks",
            "qwen2.5",
            ("<|end|>",),
            (4, 7),
            eos="<|endoftext|>",
            added=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
            source="Phi-4 / Phi-3.5 chat_template strings and a tagged Phi-4-mini fine-tuning script (public code)",
        ),
        Family(
            "llama3",
            "Meta-Llama-3-8B-Instruct",
            "qwen2.5",
            ("<|eot_id|>",),
            (),
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            added=_LLAMA3,
            source="Meta-Llama-3-8B-Instruct chat_template (chujiezheng/chat_templates llama-3-chat.jinja)",
        ),
        Family(
            "llama3_2",
            "Llama-3.2-3B-Instruct",
            "qwen2.5",
            ("<|eot_id|>",),
            (6, 8),
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            added=_LLAMA3,
            tools=True,
            tool_calls=True,
            single_tool_call=True,
            tool_call_content=False,
            source="ggerganov/llama.cpp models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja",
        ),
        Family(
            "llama3_1_nemo",
            "Llama-3.1-Instruct, NeMo's tagged template",
            "qwen2.5",
            ("<|eot_id|>",),
            (7,),
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            added=_LLAMA3,
            source="NeMo Llama 3.1 template quoted in megatron-bridge GPTSFTChatDataset tests",
        ),
        Family(
            "marin",
            "Marin 8B (OLMo 2 layout, Llama 3 tokens)",
            "qwen2.5",
            ("<|eot_id|>",),
            (7,),
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            added=_LLAMA3,
            source="marin-community/marin experiments/marin_models.py MARIN_CHAT_TEMPLATE",
        ),
        Family(
            "llama2",
            "Llama-2-7b-chat",
            "mistral-v1",
            ("</s>",),
            (2,),
            bos="<s>",
            eos="</s>",
            source="chujiezheng/chat_templates chat_templates/llama-2-chat.jinja",
        ),
        Family(
            "mistral_v1",
            "Mistral-7B-Instruct-v0.1",
            "mistral-v1",
            ("</s>",),
            (2,),
            bos="<s>",
            eos="</s>",
            system=False,
            source="ggerganov/llama.cpp examples/openai/test_chat_handlers.md (mistral_instruct_v0_1)",
        ),
        Family(
            "mistral_v3",
            "Mistral-7B-Instruct-v0.3",
            "mistral-7b-v3",
            ("</s>",),
            (6,),
            bos="<s>",
            eos="</s>",
            tools=True,
            tool_calls=True,
            tool_call_content=False,
            source="Mistral-7B-Instruct-v0.3 chat_template layout; llama.cpp Mistral-Nemo-Instruct-2407.jinja",
        ),
        Family(
            "mistral_nemo",
            "Mistral-Nemo-Instruct-2407",
            "mistral-nemo",
            ("</s>",),
            (6,),
            bos="<s>",
            eos="</s>",
            tools=True,
            tool_calls=True,
            tool_call_content=False,
            source="ggerganov/llama.cpp models/templates/mistralai-Mistral-Nemo-Instruct-2407.jinja",
        ),
        Family(
            "gemma2",
            "gemma-2-9b-it",
            "qwen2.5",
            ("<end_of_turn>",),
            (),
            bos="<bos>",
            eos="<eos>",
            added=_GEMMA,
            system=False,
            source="chujiezheng/chat_templates chat_templates/gemma-it.jinja",
        ),
        Family(
            "gemma3",
            "gemma-3-4b-it",
            "qwen2.5",
            ("<end_of_turn>",),
            (),
            bos="<bos>",
            eos="<eos>",
            added=_GEMMA,
            source="gemma-3 tokenizer_config chat_template",
        ),
        Family(
            "command_r",
            "c4ai-command-r-v01",
            "qwen2.5",
            ("<|END_OF_TURN_TOKEN|>",),
            (),
            bos="<BOS_TOKEN>",
            eos="<|END_OF_TURN_TOKEN|>",
            added=(
                "<BOS_TOKEN>",
                "<EOS_TOKEN>",
                "<|START_OF_TURN_TOKEN|>",
                "<|END_OF_TURN_TOKEN|>",
                "<|USER_TOKEN|>",
                "<|CHATBOT_TOKEN|>",
                "<|SYSTEM_TOKEN|>",
            ),
            source="c4ai-command-r-v01 chat_template; llama.cpp CohereForAI-c4ai-command-r-plus-tool_use.jinja",
        ),
        Family(
            "command_r7b",
            "c4ai-command-r7b-12-2024",
            "qwen2.5",
            ("<|END_OF_TURN_TOKEN|>",),
            (4,),
            bos="<BOS_TOKEN>",
            eos="<|END_OF_TURN_TOKEN|>",
            added=(
                "<BOS_TOKEN>",
                "<|START_OF_TURN_TOKEN|>",
                "<|END_OF_TURN_TOKEN|>",
                "<|USER_TOKEN|>",
                "<|CHATBOT_TOKEN|>",
                "<|SYSTEM_TOKEN|>",
                "<|START_RESPONSE|>",
                "<|END_RESPONSE|>",
                "<|START_THINKING|>",
                "<|END_THINKING|>",
                "<|START_ACTION|>",
                "<|END_ACTION|>",
                "<|START_TOOL_RESULT|>",
                "<|END_TOOL_RESULT|>",
            ),
            tools=True,
            tool_calls=True,
            source="ggml-org/llama.cpp models/templates/CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
        ),
        Family(
            "cat_llama3",
            "Cat-Llama-3-70B-instruct",
            "qwen2.5",
            ("<|im_end|>",),
            (3,),
            eos="<|im_end|>",
            source="turboderp/Cat-Llama-3-70B-instruct tokenizer_config chat_template",
        ),
        Family(
            "glm4_5",
            "GLM-4.5",
            "qwen2.5",
            ("</tool_call>",),  # turns end where the next role token begins; a tool-call turn with its last call
            (3, 6),
            eos="<|endoftext|>",
            added=(
                "[gMASK]",
                "<sop>",
                "<|system|>",
                "<|user|>",
                "<|assistant|>",
                "<|observation|>",
                "<think>",
                "</think>",
                "<tool_call>",
                "</tool_call>",
                "<arg_key>",
                "</arg_key>",
                "<arg_value>",
                "</arg_value>",
                "<tool_response>",
                "</tool_response>",
            ),
            tools=True,
            tool_calls=True,
            reasoning=True,
            source="ggml-org/llama.cpp models/templates/glm_4_5.jinja",
        ),
        Family(
            "granite3",
            "granite-3.0-8b-instruct",
            "qwen2.5",
            ("<|end_of_text|>",),
            (),
            bos="<|end_of_text|>",
            eos="<|end_of_text|>",
            added=("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>", "<|tool_call|>"),
            tools=True,
            source="chujiezheng/chat_templates chat_templates/granite-3.0-instruct.jinja",
        ),
        Family(
            "zephyr",
            "zephyr-7b-beta",
            "mistral-v1",
            ("</s>",),
            (),
            bos="<s>",
            eos="</s>",
            source="chujiezheng/chat_templates zephyr.jinja; open-instruct CHAT_TEMPLATES['zephyr']",
        ),
        Family(
            "falcon",
            "falcon-7b-instruct",
            "qwen2.5",
            (),
            (2,),
            eos="<|endoftext|>",
            source="chujiezheng/chat_templates chat_templates/falcon.jinja",
        ),
        Family(
            "vicuna",
            "vicuna-7b-v1.5",
            "mistral-v1",
            ("</s>",),
            (2,),
            bos="<s>",
            eos="</s>",
            source="chujiezheng/chat_templates vicuna.jinja; FastChat vicuna_v1.1 separators",
        ),
        Family(
            "alpaca",
            "Stanford Alpaca",
            "mistral-7b-v3",
            ("</s>",),
            (2,),
            bos="<s>",
            eos="</s>",
            source="chujiezheng/chat_templates alpaca.jinja; tatsu-lab/stanford_alpaca PROMPT_DICT",
        ),
        Family(
            "em_german_leo",
            "em_german_leo_mistral",
            "mistral-v1",
            (),
            (2,),
            bos="<s>",
            eos="</s>",
            source="jphme/em_german_leo_mistral chat_template (public collection of tokenizer configs)",
        ),
        Family(
            "zephyr_gemma",
            "zephyr-7b-gemma-sft-v0.1",
            "qwen2.5",
            ("<|im_end|>",),
            (4,),
            bos="<bos>",
            eos="<eos>",
            added=_GEMMA,
            source="HuggingFaceH4/zephyr-7b-gemma-sft-v0.1 chat_template (public collection of tokenizer configs)",
        ),
        Family(
            "internlm2",
            "internlm2-chat-7b",
            "mistral-7b-v3",
            ("<|im_end|>",),
            (),
            bos="<s>",
            eos="</s>",
            added=_CHATML,
            source="internlm2-chat-7b tokenizer_config chat_template",
        ),
        Family(
            "yi",
            "Yi-1.5-9B-Chat",
            "mistral-v1",
            ("<|im_end|>",),
            (),
            bos="<s>",
            eos="<|im_end|>",
            added=_CHATML,
            source="01-ai/Yi-1.5-9B-Chat tokenizer_config chat_template",
        ),
        Family(
            "smollm2",
            "SmolLM2-1.7B-Instruct",
            "qwen2.5",
            ("<|im_end|>",),
            (),
            eos="<|im_end|>",
            source="SmolLM2-1.7B-Instruct tokenizer_config chat_template",
        ),
        Family(
            "nemotron_nano_v2",
            "NVIDIA-Nemotron-Nano-9B-v2",
            "qwen3",
            ("<SPECIAL_12>",),
            (1, 3, 6),
            eos="<SPECIAL_12>",
            added=("<SPECIAL_10>", "<SPECIAL_11>", "<SPECIAL_12>"),
            tools=True,
            tool_calls=True,
            source="ggml-org/llama.cpp models/templates/NVIDIA-Nemotron-Nano-v2.jinja",
        ),
        Family(
            "gpt_oss",
            "gpt-oss-20b (harmony)",
            "qwen2.5",
            ("<|end|>", "<|return|>", "<|call|>"),
            (3, 6, 8),
            eos="<|return|>",
            added=("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>", "<|constrain|>"),
            tools=True,
            tool_calls=True,
            single_tool_call=True,
            tool_call_content=False,
            reasoning=True,
            source="openai/openai-cookbook articles/openai-harmony.md; llama.cpp notes on openai-gpt-oss-120b.jinja",
        ),
    )
}


def family(name: str) -> Family:
    """The family called ``name``; a KeyError names the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"no family {name!r}; known: {', '.join(sorted(FAMILIES))}") from None
