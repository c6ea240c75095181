"""ctclip: 3D chest-CT vision-language pretraining (models, losses, data, DeepSpeed engine)."""

__version__ = '0.1.0'
