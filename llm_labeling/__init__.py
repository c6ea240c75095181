"""Silver labels and diagnostic evidence from radiology reports (rules or any LLM)."""

from llm_labeling.schema import FINDINGS

__all__ = ['FINDINGS']
