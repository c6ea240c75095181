"""The application layer: pipelines that chain every stage (the demo, the ablation).

Like `ctclip.cli`, it may reach all four packages; library code never imports it. It drives the
stages through their command-line verbs, so the demo exercises exactly what a user runs.
"""
