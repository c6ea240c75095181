"""3D phrase grounding: ReXGroundingCT's metrics and reader, and the grounding benchmarks."""
