"""3D image towers. Each returns pooled features and a grid of spatial tokens.

The tokens feed the evidence objective (each token is softly assigned to evidence prototypes);
the pooled vector feeds the CLIP projection and the classifier. MONAI and pytorch-3dunet are
imported inside the builders: `import monai.networks.nets` costs seconds.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ctcommon.settings import check_keys

_logger = logging.getLogger(__name__)


class ImageTower(nn.Module):
    """Base: `forward(x [B, C, D, H, W]) -> (pooled [B, width], tokens [B, N, width])`.

    `forward_grid(x)` returns the same tokens as a grid [B, width, d, h, w] (token n of
    `forward` is grid voxel n in C order), so phrase grounding can place them in the volume.
    """

    width: int

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and x.requires_grad:
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


POOLINGS = ('avg', 'max', 'avgmax')


def _grid_to_tokens(grid: torch.Tensor, pool: str = 'avg') -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the grid; 'max' and 'avgmax' keep small, focal findings from being averaged away."""
    tokens = grid.flatten(2).transpose(1, 2)  # [B, D*H*W, C]
    if pool == 'avg':
        return tokens.mean(dim=1), tokens
    if pool == 'max':
        return tokens.amax(dim=1), tokens
    # A single token pooled both ways is itself twice, so tokens live in the pooled vector's space.
    return torch.cat([tokens.mean(dim=1), tokens.amax(dim=1)], dim=1), torch.cat(
        [tokens, tokens], -1
    )


class ResNet3dTower(ImageTower):
    """MONAI's 3D ResNet without its head; GreenRFM's 1-channel stride-2 stem by default.

    A stride-2 stem costs about a tenth of the default stride-1 stem per step at 192x192x96.
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        block: str = 'basic',
        block_inplanes: Sequence[int] = (64, 128, 256, 512),
        in_chans: int = 1,
        stem_kernel: int = 7,
        stem_stride: int = 2,
        no_max_pool: bool = False,
        shortcut_type: str = 'B',
        pool: str = 'avg',
        stage_strides: Sequence[int] = (1, 2, 2, 2),
    ) -> None:
        super().__init__()
        from monai.networks.nets.resnet import ResNet

        if pool not in POOLINGS:
            raise ValueError(f'pool must be one of {POOLINGS}, not {pool!r}')

        if len(layers) != 4 or len(block_inplanes) != 4:
            message = f'layers and block_inplanes must have 4 entries, not {list(layers)} and {list(block_inplanes)}'
            raise ValueError(message)
        net = ResNet(
            block=block,
            layers=list(layers),
            block_inplanes=list(block_inplanes),
            spatial_dims=3,
            n_input_channels=in_chans,
            conv1_t_size=stem_kernel,
            conv1_t_stride=stem_stride,
            no_max_pool=no_max_pool,
            shortcut_type=shortcut_type,
            feed_forward=False,
        )
        self.stem = nn.Sequential(net.conv1, net.bn1, net.act)
        self.maxpool = nn.Identity() if no_max_pool else net.maxpool
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        _set_stage_strides(self.stages, stage_strides)
        self.pool = pool
        channels = block_inplanes[3] * (4 if block == 'bottleneck' else 1)
        self.width = channels * (2 if pool == 'avgmax' else 1)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.stem(x))
        for stage in self.stages:
            x = self._run(stage, x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _grid_to_tokens(self._features(x), self.pool)

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        grid = self._features(x)
        return torch.cat([grid, grid], 1) if self.pool == 'avgmax' else grid


def _set_stage_strides(stages: nn.ModuleList, strides: Sequence[int]) -> None:
    """Keep a stage at its input's resolution (stride 1 instead of MONAI's 2): a finer token
    grid for phrase grounding. The last stage at stride 1 turns the small recipe's 48 x 96 x 96
    crop into 3 x 6 x 6 tokens instead of 2 x 3 x 3 at the same cost (docs/models.md)."""
    strides = [int(s) for s in strides]
    if len(strides) != 4 or strides[0] != 1 or any(s not in (1, 2) for s in strides):
        raise ValueError(
            f'stage_strides must be 4 strides of 1 or 2 with the first 1, not {list(strides)}'
        )
    for stage, stride in zip(stages, strides, strict=True):
        if stride == 2:  # MONAI's own stride for stages 2-4
            continue
        first = stage[0]
        if callable(first.downsample) and not isinstance(first.downsample, nn.Module):
            raise ValueError(
                "stage_strides other than [1, 2, 2, 2] need shortcut_type 'B', not 'A'"
            )
        for module in first.modules():  # the strided 3x3 conv (basic: conv1, bottleneck: conv2)
            if isinstance(module, nn.Conv3d) and module.stride != (1, 1, 1):  # and the shortcut
                module.stride = (1, 1, 1)


class ViT3dTower(ImageTower):
    """MONAI's 3D ViT (no class token); patch tokens are the spatial tokens, pooled by mean."""

    def __init__(
        self,
        img_size: Sequence[int] = (96, 96, 48),
        patch_size: Sequence[int] = (16, 16, 8),
        hidden_size: int = 384,
        mlp_dim: int = 1536,
        num_layers: int = 12,
        num_heads: int = 6,
        in_chans: int = 1,
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        from monai.networks.nets import ViT

        if len(img_size) != 3 or len(patch_size) != 3:
            raise ValueError(
                f'img_size and patch_size must be (D, H, W), not {img_size} and {patch_size}'
            )
        for size, patch in zip(img_size, patch_size, strict=True):
            if size % patch:
                raise ValueError(
                    f'img_size {list(img_size)} must be divisible by patch_size {list(patch_size)}'
                )
        vit = ViT(
            in_channels=in_chans,
            img_size=list(img_size),
            patch_size=list(patch_size),
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            dropout_rate=dropout_rate,
            spatial_dims=3,
            qkv_bias=qkv_bias,
        )
        self.patch_embedding = vit.patch_embedding
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.img_size = tuple(img_size)
        self.patch_size = tuple(patch_size)
        self.width = hidden_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(x.shape[2:]) != self.img_size:
            message = f'ViT input must be {list(self.img_size)} (D, H, W), not {list(x.shape[2:])}'
            raise ValueError(message)
        x = self.patch_embedding(x)
        for block in self.blocks:
            x = self._run(block, x)
        tokens = self.norm(x)
        return tokens.mean(dim=1), tokens

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        _, tokens = self.forward(x)
        grid = [s // p for s, p in zip(self.img_size, self.patch_size, strict=True)]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


class UNet3dEncoderTower(ImageTower):
    """The encoder path of pytorch-3dunet's UNet3D, so a pretrained tower can seed a segmenter."""

    def __init__(
        self,
        f_maps: Sequence[int] = (32, 64, 128, 256),
        in_chans: int = 1,
        layer_order: str = 'gcr',
        num_groups: int = 8,
        basic_module: str = 'double_conv',
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        from pytorch3dunet.unet3d.buildingblocks import DoubleConv, ResNetBlock, create_encoders

        modules = {'double_conv': DoubleConv, 'resnet_block': ResNetBlock}
        if basic_module not in modules:
            raise ValueError(f"basic_module must be one of {sorted(modules)}, not '{basic_module}'")
        # A strided 1-channel stem keeps full-resolution convolutions off the CPU, as in the ResNet.
        self.stem = nn.AvgPool3d(stem_stride) if stem_stride > 1 else nn.Identity()
        self.encoders = create_encoders(
            in_chans,
            list(f_maps),
            modules[basic_module],
            3,
            1,
            2,
            0.0,
            layer_order,
            num_groups,
            2,
            True,
        )
        self.width = f_maps[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _grid_to_tokens(self.forward_grid(x))

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for encoder in self.encoders:
            x = self._run(encoder, x)
        return x


_TOWERS: dict[str, Callable[..., ImageTower]] = {
    'resnet3d': ResNet3dTower,
    'vit3d': ViT3dTower,
    'unet3d_encoder': UNet3dEncoderTower,
}


def build_image_tower(cfg: dict[str, Any]) -> ImageTower:
    """Build the tower named by `cfg['arch']` from the remaining keys (its constructor arguments)."""
    cfg = dict(cfg)
    arch = cfg.pop('arch', None)
    if arch not in _TOWERS:
        raise ValueError(f'vision_cfg.arch must be one of {sorted(_TOWERS)}, not {arch!r}')
    cfg.pop('grad_checkpointing', None)
    builder = _TOWERS[arch]
    valid = set(inspect.signature(builder.__init__).parameters) - {'self'}
    check_keys(cfg, valid, 'vision_cfg')  # the keys of this arch's constructor
    return builder(**cfg)
