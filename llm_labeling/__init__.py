"""Silver labels and diagnostic evidence from radiology reports (rules or any LLM).

Entry points: `label_reports(cfg) -> Path` (labeling run) and `evaluate_labels(...)` (scoring
against manual labels); both import lazily so `import llm_labeling` stays cheap.
"""

from llm_labeling.schema import FINDINGS

__all__ = ['FINDINGS', 'label_reports', 'evaluate_labels']


def __getattr__(name: str):
    if name == 'label_reports':
        from llm_labeling.runner import label_reports

        return label_reports
    if name == 'evaluate_labels':
        from llm_labeling.evaluate import evaluate_labels

        return evaluate_labels
    raise AttributeError(f'module llm_labeling has no attribute {name!r}')
