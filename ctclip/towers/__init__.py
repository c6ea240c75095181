"""Image and text towers; `ctclip.model.CTClip` joins them in one embedding space."""

from ctclip.towers.image import ImageTower, build_image_tower
from ctclip.towers.text import TextCfg, TextTower

__all__ = ['ImageTower', 'TextCfg', 'TextTower', 'build_image_tower']
