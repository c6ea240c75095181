"""Pieces every ctclip package shares: the bottom of the import graph.

`ctcommon` imports nothing of ours (a test walks the imports to keep it so), so `preprocessing`,
`llm_labeling`, `synth`, `ctclip` and `benchmarks` can all use it without depending on each other.
"""
