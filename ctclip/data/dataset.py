"""A map-style dataset over the HDF5 volume cache that yields the training batch contract.

The cache handle is opened lazily in each process (a forked DataLoader worker never shares an
HDF5 handle), only the crop is read from disk, and every random choice comes from the sample's
own (seed, epoch, index) generator, so workers and resumes are reproducible.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ctclip.data.sampling import sample_rng
from ctclip.data.text import TextTable
from ctclip.data.transforms import AnyWindow, as_channels, model_input, read_hu_crop

_logger = logging.getLogger(__name__)


def open_volume_cache(path: str) -> Any:
    """The cache at `path`; an unreadable file (truncated, not HDF5) raises `CacheCorruptError`."""
    from preprocessing.cache import open_cache
    from preprocessing.errors import CacheCorruptError

    try:
        return open_cache(path)
    except FileNotFoundError:
        raise
    except OSError as error:  # h5py names neither the file nor an errno
        raise CacheCorruptError(path, None, f'cannot open: {error}') from error


class CTVolumeDataset(torch.utils.data.Dataset):
    """Rows of (image of study i, text of study i or of another study), keyed by `(epoch, i)`.

    Args:
        cache_path: the preprocessing cache (one .h5 or a merged shard set).
        volume_ids: the volumes of this split, in a fixed order (row i).
        shapes: (z, y, x) shape of each volume, read once from the cache attributes.
        table: labels, report tokens and evidence aligned with `volume_ids`.
        crop_zyx: crop size; random for training, centre for evaluation.
        window: HU window and output range, or a stack of them (one channel each).
        paired: bool [N], studies whose image keeps its own report (limited pairing).
        train: random crops and unpaired partners when True; centre crops, own report when False.
        pseudo_labels: float [N, 18] stage-1 probabilities used for unpaired images.
        unpaired_text: 'other' (an unpaired row shows another unpaired study's report) or 'none'.
        augment: optional TorchIO transform for training rows.
        seed: base of every per-sample generator.
    """

    def __init__(
        self,
        cache_path: str,
        volume_ids: Sequence[str],
        shapes: Sequence[Sequence[int]],
        table: TextTable,
        crop_zyx: Sequence[int],
        window: AnyWindow,
        paired: np.ndarray | None = None,
        train: bool = True,
        pseudo_labels: np.ndarray | None = None,
        unpaired_text: str = 'other',
        augment: Any = None,
        seed: int = 0,
    ):
        if unpaired_text not in ('other', 'none'):
            raise ValueError(f"data.unpaired_text must be 'other' or 'none', not {unpaired_text!r}")
        self.cache_path, self.volume_ids = str(cache_path), list(volume_ids)
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        self.table, self.crop, self.window = table, tuple(crop_zyx), window
        n = len(self.volume_ids)
        self.paired = np.ones(n, bool) if paired is None else np.asarray(paired, bool)
        self.train, self.pseudo_labels, self.unpaired_text = train, pseudo_labels, unpaired_text
        self.augment, self.seed = augment, seed
        self.unpaired_rows = np.flatnonzero(~self.paired & table.has_report)
        self._cache = None

    def __len__(self) -> int:
        return len(self.volume_ids)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state['_cache'] = None  # never pickle an open HDF5 handle into a worker
        return state

    @property
    def cache(self) -> Any:
        if self._cache is None:
            self._cache = open_volume_cache(self.cache_path)
        return self._cache

    def image(self, index: int, rng: np.random.Generator | None) -> torch.Tensor:
        """The crop of one volume as int16 HU [1, D, H, W], windowed by the model on its device;
        with `augment` (TorchIO works on the windowed float image) float32 [C, D, H, W]."""
        volume_id = self.volume_ids[index]
        try:
            hu = read_hu_crop(
                self.cache, volume_id, self.shapes[index], self.crop, self.window, rng
            )
        except KeyError as error:
            raise RuntimeError(
                f'Cannot read volume {volume_id!r} from {self.cache_path}: {error}'
            ) from error
        except OSError as error:  # a damaged chunk: name the volume, the path and the fault
            from preprocessing.errors import CacheCorruptError

            raise CacheCorruptError(self.cache_path, volume_id, f'cannot read: {error}') from error
        if self.augment is None or rng is None:
            return torch.from_numpy(np.ascontiguousarray(model_input(hu, self.window)))
        tensor = torch.from_numpy(np.ascontiguousarray(as_channels(self.window(hu))))
        torch.manual_seed(int(rng.integers(2**31)))
        return self.augment(tensor)

    def text_row(self, index: int, epoch: int) -> int:
        """Row whose report fills the text slot: the study itself, another unpaired one, or -1."""
        if not self.train or self.paired[index]:
            return index if self.table.has_report[index] else -1
        if self.unpaired_text == 'none':
            return -1
        others = self.unpaired_rows[self.unpaired_rows != index]
        if len(others) == 0:
            return -1
        return int(others[sample_rng(self.seed, epoch, index, 1).integers(len(others))])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = sample_rng(self.seed, epoch, index) if self.train else None
        t = self.table
        j = self.text_row(index, epoch)
        own = bool(self.paired[index]) or not self.train
        image_labels = t.labels[index] if own else np.full_like(t.labels[index], -1.0)
        pseudo = (not own) and self.pseudo_labels is not None
        if pseudo:
            image_labels = self.pseudo_labels[index]
        item = {
            'image': self.image(index, rng),
            'has_image': True,
            'has_text': j >= 0,
            'paired': j == index,
            'image_labels': torch.as_tensor(image_labels, dtype=torch.float32),
            'image_labels_are_pseudo': pseudo,
            'index': index,
            'volume_id': self.volume_ids[index],
        }
        item.update(self._text_fields(j))
        return item

    def _text_fields(self, j: int) -> dict[str, torch.Tensor]:
        t = self.table
        if j < 0:
            return {
                'text_labels': torch.full((t.labels.shape[1],), -1.0),
                'input_ids': torch.zeros(t.input_ids.shape[1], dtype=torch.long),
                'attention_mask': torch.zeros(t.attention_mask.shape[1], dtype=torch.long),
                'evidence_input_ids': torch.zeros(t.evidence_input_ids.shape[1:], dtype=torch.long),
                'evidence_attention_mask': torch.zeros(
                    t.evidence_attention_mask.shape[1:], dtype=torch.long
                ),
                'evidence_mask': torch.zeros(t.evidence_mask.shape[1], dtype=torch.bool),
                'evidence_finding': torch.full(
                    (t.evidence_finding.shape[1],), -1, dtype=torch.long
                ),
            }
        return {
            'text_labels': torch.from_numpy(t.labels[j].astype(np.float32)),
            'input_ids': torch.from_numpy(t.input_ids[j]),
            'attention_mask': torch.from_numpy(t.attention_mask[j]),
            'evidence_input_ids': torch.from_numpy(t.evidence_input_ids[j]),
            'evidence_attention_mask': torch.from_numpy(t.evidence_attention_mask[j]),
            'evidence_mask': torch.from_numpy(t.evidence_mask[j]),
            'evidence_finding': torch.from_numpy(t.evidence_finding[j]),
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors and flags; strings stay in a plain list under `volume_id` (the engine skips it)."""
    out: dict[str, Any] = {}
    for key, value in items[0].items():
        values = [item[key] for item in items]
        if isinstance(value, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(value, (bool, np.bool_)):
            out[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(value, (int, np.integer)):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out
