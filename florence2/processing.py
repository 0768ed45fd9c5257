"""Preprocessing (PIL/numpy, no torchvision) and prompt/target encoding.

Images are resized to a square ``image_size`` with bicubic resampling, scaled to
[0, 1] and normalised with ImageNet mean/std, as the reference image processor
does.  Prompts become ``<image> * N + <s> + prompt + </s>``, right-padded with an
attention mask; targets become ``<s> + answer + </s>`` labels with -100 on padding.
Saved in the Hugging Face layout, so ``AutoProcessor`` loads it too.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageInputError(ValueError):
    """An input that is not a decodable image."""


def to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            img = Image.open(io.BytesIO(bytes(image)))
            img.load()
        except Exception as e:
            raise ImageInputError(f"not an image ({len(image)} bytes): {e}") from None
        return img.convert("RGB")
    if isinstance(image, np.ndarray) and image.ndim == 3:
        return Image.fromarray(image.astype(np.uint8)).convert("RGB")
    raise ImageInputError(f"not an image: {type(image).__name__}")


def image_header(image) -> tuple[tuple[int, int], str | None]:
    """((width, height), format) without decoding the pixels (format None for raw arrays)."""
    if isinstance(image, Image.Image):
        return image.size, image.format
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            img = Image.open(io.BytesIO(bytes(image)))
        except Exception as e:
            raise ImageInputError(f"not an image ({len(image)} bytes): {type(e).__name__}") from None
        return img.size, img.format
    if isinstance(image, np.ndarray) and image.ndim == 3:
        return (image.shape[1], image.shape[0]), None
    raise ImageInputError(f"not an image: {type(image).__name__}")


def num_image_tokens(image_size: int, vision_config) -> int:
    """Visual tokens the DaViT tower emits for a square image: the last stage's grid plus one pooled token."""
    s = image_size
    for k, st, p in zip(vision_config.patch_size, vision_config.patch_stride, vision_config.patch_padding):
        s = (s + 2 * p - k) // st + 1
    return s * s + 1


@dataclass
class Processor:
    """Images and prompts/targets to model inputs, for training and the predictor's fast path.  Saved
    and loaded in the layout of transformers' ``Florence2Processor`` (``to_hf`` gives that class over
    the same files); a separate name, so the two are never confused."""
    tokenizer: object
    image_size: int
    num_image_tokens: int
    image_mean: tuple = IMAGENET_MEAN
    image_std: tuple = IMAGENET_STD

    def preprocess(self, images) -> np.ndarray:
        """Images (PIL, bytes, HWC arrays) -> float32 array (B, 3, S, S)."""
        out = np.empty((len(images), 3, self.image_size, self.image_size), dtype=np.float32)
        mean = np.asarray(self.image_mean, np.float32)[:, None, None]
        std = np.asarray(self.image_std, np.float32)[:, None, None]
        for i, im in enumerate(images):
            im = to_pil(im).resize((self.image_size, self.image_size), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) * np.float32(1 / 255)
            out[i] = (arr - mean) / std
        return out

    def preprocess_tensor(self, images, device="cpu"):
        """``preprocess`` on the device: uint8 pixels travel (pinned on CUDA), the resize and
        normalisation run as tensor ops.  The antialiased bicubic kernel is PIL's (a = -0.5) and the
        result of each of its two passes is rounded to uint8 levels as PIL's is, so values match ``preprocess`` to within one
        level where fixed-point rounding differs.  Returns float32 (B, 3, S, S) on ``device``."""
        import torch
        import torch.nn.functional as F

        s = self.image_size
        out = torch.empty((len(images), 3, s, s), dtype=torch.float32, device=device)
        mean = torch.tensor(self.image_mean, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.image_std, device=device).view(1, 3, 1, 1) * 255
        arrays = [np.asarray(to_pil(im)) for im in images]
        by_size: dict[tuple, list[int]] = {}
        for i, a in enumerate(arrays):
            by_size.setdefault(a.shape, []).append(i)
        cuda = str(device).startswith("cuda")
        for idx in by_size.values():  # one resize per distinct input size
            x = torch.from_numpy(np.stack([arrays[i] for i in idx]))
            if cuda:
                x = x.pin_memory()
            x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
            # two passes, horizontal first, each rounded to uint8 levels: what PIL does
            if x.shape[-1] != s:
                x = F.interpolate(x, size=(x.shape[-2], s), mode="bicubic", antialias=True, align_corners=False)
                x = x.round_().clamp_(0, 255)
            if x.shape[-2] != s:
                x = F.interpolate(x, size=(s, s), mode="bicubic", antialias=True, align_corners=False)
                x = x.round_().clamp_(0, 255)
            out[torch.tensor(idx, device=device)] = (x - mean) / std
        return out

    def encode_prompts(self, prompts: list[str], pad_multiple: int = 1) -> dict:
        tok = self.tokenizer
        head = [tok.image_token_id] * self.num_image_tokens + [tok.bos_token_id]
        seqs = [head + tok(p, add_special_tokens=False).input_ids + [tok.eos_token_id] for p in prompts]
        return _pad(seqs, tok.pad_token_id, pad_multiple)

    def encode_targets(self, targets: list[str], pad_multiple: int = 1) -> np.ndarray:
        tok = self.tokenizer
        seqs = [[tok.bos_token_id] + tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id] for t in targets]
        return _pad(seqs, -100, pad_multiple)["input_ids"]

    def batch(self, images, prompts: list[str], targets: list[str] | None = None, pad_multiple: int = 1) -> dict:
        """Model inputs as torch tensors; with ``targets``, ``labels`` for the loss.  ``pad_multiple``
        rounds both lengths up (length bucketing: a compiled model sees few distinct shapes)."""
        import torch

        enc = self.encode_prompts(prompts, pad_multiple)
        out = {"pixel_values": torch.from_numpy(self.preprocess(images)),
               "input_ids": torch.from_numpy(enc["input_ids"]), "attention_mask": torch.from_numpy(enc["attention_mask"])}
        if targets is not None:
            out["labels"] = torch.from_numpy(self.encode_targets(targets, pad_multiple))
        return out

    # --- Hugging Face layout ---
    def save_pretrained(self, path) -> None:
        from transformers import CLIPImageProcessorPil
        from transformers import Florence2Processor as HFProcessor

        from florence2.parsing import POST_PROCESSOR_CONFIG

        ip = CLIPImageProcessorPil(
            do_resize=True, size={"height": self.image_size, "width": self.image_size}, resample=3,
            do_center_crop=False, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
            image_mean=list(self.image_mean), image_std=list(self.image_std), do_convert_rgb=True)
        ip.image_seq_length = self.num_image_tokens
        HFProcessor(image_processor=ip, tokenizer=self.tokenizer,
                    post_processor_config=POST_PROCESSOR_CONFIG).save_pretrained(str(path))

    def to_hf(self):
        """transformers' own processor over the same files (the parsing reference in tests)."""
        from transformers import AutoProcessor

        import tempfile

        with tempfile.TemporaryDirectory() as d:
            self.save_pretrained(d)
            return AutoProcessor.from_pretrained(d)

    @classmethod
    def from_pretrained(cls, path) -> "Processor":
        from florence2.tokenization import load_tokenizer

        path = Path(path)
        cfg_file = path / "preprocessor_config.json"
        if not cfg_file.exists():
            cfg_file = path / "processor_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg = cfg.get("image_processor", cfg)
        size = cfg.get("size") or {}
        image_size = int(size.get("height") or size.get("shortest_edge") or cfg.get("crop_size", {}).get("height"))
        return cls(load_tokenizer(path), image_size, int(cfg["image_seq_length"]),
                   tuple(cfg.get("image_mean", IMAGENET_MEAN)), tuple(cfg.get("image_std", IMAGENET_STD)))


def _pad(seqs, pad_value, multiple: int = 1) -> dict:
    n = -(-max(len(s) for s in seqs) // multiple) * multiple
    ids = np.full((len(seqs), n), pad_value, dtype=np.int64)
    mask = np.zeros((len(seqs), n), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}
