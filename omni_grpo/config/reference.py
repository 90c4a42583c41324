"""The Markdown configuration reference, generated from the schema's help strings.

`docs/config_reference.md` is `reference_markdown()`; regenerate it with
`python -m omni_grpo.config > docs/config_reference.md` (a test fails when it is out of date).
"""

from __future__ import annotations

import dataclasses
import json
import textwrap

from omni_grpo.config.convert import _hints
from omni_grpo.config.schema import TrainConfig

_LONG_DEFAULT = 60  # longer string defaults are printed after the tables

_SECTION_TITLES = {
    "model_name_or_path": "Model",
    "data": "Data",
    "num_generations": "Rollout",
    "beta": "Algorithm",
    "learning_rate": "Optimiser",
    "reward_funcs": "Rewards",
    "seed": "Run",
}


def _format_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if f.name == "model_name_or_path":
        return "required"
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str) and len(value) > _LONG_DEFAULT:
        return "see below"
    elif isinstance(value, str):
        text = value if value else '""'
    elif isinstance(value, list):
        text = "[" + ", ".join(str(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{}" if not value else json.dumps(value)
    else:
        text = repr(value)
    return f"`{text}`"


def _row(f: dataclasses.Field, prefix: str) -> str:
    meaning = f.metadata["help"]
    if "choices" in f.metadata:
        meaning += " One of: " + ", ".join(f"`{c}`" for c in f.metadata["choices"]) + "."
    return f"| `{prefix}{f.name}` | {_format_default(f)} | {meaning} |".replace("\n", " ")


def reference_markdown() -> str:
    """The configuration reference as Markdown tables, one per section, generated from the help strings."""
    lines = [
        "# Configuration reference",
        "",
        "Every option of `omni_grpo.config.TrainConfig`. Set options in a YAML file or on the command line as",
        "`key=value` (values are YAML: `true`, `1e-6`, `[a, b]`, `null`; nested options take dots: `lora.r=8`).",
        "A misspelled key is an error. Counting: each prompt yields `num_generations` (G) completions, one row",
        "each; a micro-step on one device holds `per_device_prompts × G` rows; an optimizer step is",
        "`gradient_accumulation_steps` micro-steps on every device.",
        "",
        "Generated from the help strings by `python -m omni_grpo.config > docs/config_reference.md`;",
        "a test fails when this file is out of date.",
    ]
    hints = _hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SECTION_TITLES:
            lines += ["", f"## {_SECTION_TITLES[f.name]}", "", "| Option | Default | Meaning |", "|---|---|---|"]
        section = hints[f.name]
        if dataclasses.is_dataclass(section):
            lines.extend(_row(sub, f"{f.name}.") for sub in dataclasses.fields(section))
        else:
            lines.append(_row(f, ""))
    for f in dataclasses.fields(TrainConfig):
        if isinstance(f.default, str) and len(f.default) > _LONG_DEFAULT:
            lines += [
                "",
                f"## Default `{f.name}`",
                "",
                "One line, wrapped here for reading:",
                "",
                "```text",
                *textwrap.wrap(f.default, 100),
                "```",
            ]
    return "\n".join(lines) + "\n"
