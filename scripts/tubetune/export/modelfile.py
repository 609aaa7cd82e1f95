"""An Ollama Modelfile for the tuned GGUF: FROM, the chat TEMPLATE in Go template syntax, stop tokens,
the SYSTEM prompt the model was trained with and sampling PARAMETERs.

The Jinja chat template stored in the GGUF is recognised as ChatML (``<|im_start|>``, SmolLM2, Qwen)
or Llama 3 (``<|start_header_id|>``) and written as the equivalent Go template over ``.Messages``
(Ollama puts the SYSTEM prompt first in ``.Messages`` when the request has no system message).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from tubetune.errors import ConfigError, InputFileError
from tubetune.jsonio import atomic_write_text, read_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatFormat:
    name: str
    template: str
    stops: tuple[str, ...]


CHATML = ChatFormat(
    name="chatml",
    template=(
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
        "<|im_start|>{{ .Role }}\n"
        "{{ .Content }}{{ if or (ne .Role \"assistant\") (not $last) }}<|im_end|>\n"
        "{{ end }}\n"
        "{{- if and (ne .Role \"assistant\") $last }}<|im_start|>assistant\n"
        "{{ end }}\n"
        "{{- end }}"
    ),
    stops=("<|im_start|>", "<|im_end|>"),
)


def llama3_format(knowledge_cutoff: str | None) -> ChatFormat:
    """Llama 3.x: header tokens around each role; <|begin_of_text|> is added by llama.cpp (add_bos)."""
    cutoff = (
        f"{{{{ if eq .Role \"system\" }}}}Cutting Knowledge Date: {knowledge_cutoff}\n\n{{{{ end }}}}"
        if knowledge_cutoff
        else ""
    )
    return ChatFormat(
        name="llama3",
        template=(
            "{{- range $i, $_ := .Messages }}\n"
            "{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
            "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
            f"{cutoff}"
            "{{ .Content }}{{ if or (ne .Role \"assistant\") (not $last) }}<|eot_id|>{{ end }}\n"
            "{{- if and (ne .Role \"assistant\") $last }}<|start_header_id|>assistant<|end_header_id|>\n\n"
            "{{ end }}\n"
            "{{- end }}"
        ),
        stops=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    )


def chat_format(jinja_template: str | None) -> ChatFormat | None:
    """The Ollama chat format equivalent to a Jinja chat template (None: not recognised)."""
    if not jinja_template:
        return None
    if "<|im_start|>" in jinja_template and "<|im_end|>" in jinja_template:
        return CHATML
    if "<|start_header_id|>" in jinja_template and "<|eot_id|>" in jinja_template:
        cutoff = None
        marker = "Cutting Knowledge Date: "
        if marker in jinja_template:
            cutoff = jinja_template.split(marker, 1)[1].split("\\n", 1)[0].split("\n", 1)[0].strip()
        return llama3_format(cutoff or None)
    return None


def gguf_chat_template(path: str | Path) -> str | None:
    """tokenizer.chat_template of a GGUF file."""
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path}: cannot read GGUF ({exc})") from exc
    field = reader.get_field(gguf.Keys.Tokenizer.CHAT_TEMPLATE)
    if field is None:
        return None
    value = field.contents()
    return value if isinstance(value, str) else None


def _quote(text: str) -> str:
    if '"""' in text:
        raise ConfigError('export.ollama_system: the system prompt must not contain """')
    return f'"""{text}"""'


def render_modelfile(
    gguf_name: str,
    chat: ChatFormat | None,
    system: str | None,
    parameters: Mapping[str, Any],
) -> str:
    lines = [
        "# Ollama Modelfile written by tubetune. Create the model with:",
        "#   cd results/export/gguf && ollama create tubetune -f Modelfile",
        f"FROM ./{gguf_name}",
        "",
    ]
    if chat is not None:
        lines += [f"# chat format: {chat.name} (translated from the GGUF's chat template)",
                  f"TEMPLATE {_quote(chat.template)}", ""]
        lines += [f'PARAMETER stop "{stop}"' for stop in chat.stops]
    else:
        lines.append("# chat template not recognised: Ollama uses the template stored in the GGUF")
    lines += [f"PARAMETER {key} {value}" for key, value in parameters.items()]
    if system:
        lines += ["", f"SYSTEM {_quote(system)}"]
    return "\n".join(lines) + "\n"


def system_prompt_from_stats(stats_path: str | Path) -> str | None:
    stats = read_json(stats_path)
    value = stats.get("system_prompt") if isinstance(stats, dict) else None
    return value if isinstance(value, str) and value.strip() else None


def modelfile(
    gguf_path: str | Path,
    stats: str | Path,
    out_path: str | Path,
    *,
    system: str | None,
    parameters: Mapping[str, Any],
) -> str:
    """Rule modelfile: the Modelfile ``out_path`` next to ``gguf_path``; return its text.

    ``system``: the SYSTEM prompt (None: the dataset's system prompt from ``stats``).
    """
    gguf_file = Path(gguf_path)
    target = Path(out_path)
    if gguf_file.parent.resolve() != target.parent.resolve():
        raise ConfigError(f"the Modelfile must sit next to {gguf_file.name} (FROM uses a relative path)")
    template = gguf_chat_template(gguf_file)
    chat = chat_format(template)
    if chat is None:
        logger.warning("%s: chat template not recognised (neither ChatML nor Llama 3): no TEMPLATE written",
                       gguf_file)
    prompt = system if system is not None else system_prompt_from_stats(stats)
    if prompt is None:
        logger.warning("no system prompt (export.ollama_system is null and stats.json has none)")
    text = render_modelfile(gguf_file.name, chat, prompt, parameters)
    atomic_write_text(target, text)
    logger.info("wrote %s (FROM ./%s, chat format %s, system prompt %d chars)", target, gguf_file.name,
                chat.name if chat else "none", len(prompt or ""))
    return text
