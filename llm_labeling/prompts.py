"""The two prompt styles: structured evidence (ours) and Li et al.'s one line of 18 values.

A prompt's version is part of the response-cache key, so change `PROMPT_VERSIONS` whenever the
wording changes: old cached answers then stop matching instead of being silently reused.
"""

from __future__ import annotations

from llm_labeling.schema import FINDINGS

PROMPT_STYLES = ('evidence', 'li')
PROMPT_VERSIONS: dict[str, str] = {'evidence': 'evidence-2', 'li': 'li-1'}

# CT-RATE's label definitions, which the manual labels follow; an LLM needs them spelled out.
DEFINITIONS = """\
- Medical material: any device or implant: catheters, tubes, ports, stents, clips, pacemaker, \
prosthetic valves, sternotomy wires, surgical sutures.
- Arterial wall calcification: calcified plaques of the aorta or other arteries (not coronary).
- Coronary artery wall calcification: calcification of the coronary arteries.
- Lymphadenopathy: lymph nodes described as enlarged or pathological, and any described lymph \
node with a size.
- Lung nodule: nodules or masses in the lung.
- Lung opacity: ground-glass opacity, infiltration or increased density of the lung; NOT nodules, \
atelectasis or fibrotic change.
- Pulmonary fibrotic sequela: fibrotic bands, scarring, sequelae changes, fibrosis.
- Peribronchial thickening: thickened bronchial walls.
- Mosaic attenuation pattern: mosaic attenuation or air trapping."""

EVIDENCE_INSTRUCTIONS = f"""\
You extract findings from a chest CT report for the 18 CT-RATE labels. For every finding give its \
status: "present", "absent" (the report says it is not there), "uncertain" (possible, suspected, \
cannot be excluded) or "not_mentioned". For a mentioned finding copy the report's words that \
state it into "quote", character for character (a short phrase is best), and give the location \
(side, lobe or segment, or structure) and descriptors (size, severity, extent) when the report \
states them. Never invent words that are not in the report.
{DEFINITIONS}"""

LI_PROMPT = (
    'Read the chest CT report below and decide for each of these 18 abnormalities whether it is '
    'present (1), absent (0) or uncertain (-1): {findings}. Answer with exactly one line of 18 '
    'comma-separated values in that order and nothing else.\n\nReport:\n{report}'
)


def evidence_messages(text: str) -> list[dict[str, str]]:
    """One user message: some chat templates (Gemma's among them) silently drop a system turn."""
    return [{'role': 'user', 'content': f'{EVIDENCE_INSTRUCTIONS}\n\nReport:\n{text}'}]


def li_messages(text: str) -> list[dict[str, str]]:
    """Li et al. (2025): a plain request, no schema, no system prompt."""
    content = LI_PROMPT.format(findings='; '.join(FINDINGS), report=text)
    return [{'role': 'user', 'content': content}]


def check_style(style: str) -> str:
    if style not in PROMPT_STYLES:
        raise ValueError(f'Prompt style must be one of {", ".join(PROMPT_STYLES)}, not {style!r}')
    return style
