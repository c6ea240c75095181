"""CT-RATE and RAD-ChestCT zero-shot and retrieval benchmarks under the published protocols."""
