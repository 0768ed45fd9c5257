"""Batched inference: (image, task, optional text or region) -> parsed answers with confidences.

Prompts are right-padded with a real attention mask (the original hub code
overwrote the mask with ones, so padded prompts attended to padding); batched
output therefore equals one-by-one output.  Each box, quad or polygon gets a
confidence: the geometric mean of the probabilities of its location tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from florence2.locations import LOC_RE
from florence2.parsing import format_answer, parse_instances
from florence2.processing import Florence2Processor, ImageInputError, to_pil
from florence2.tasks import TaskInputError, build_prompt, get_task


@dataclass
class Request:
    image: Any                    # PIL image, encoded bytes, or HWC uint8 array
    task: str
    text: str | None = None
    region: tuple | None = None   # (x0, y0, x1, y1) in pixels


class PredictionInputError(ValueError):
    """A request that cannot be run; the message names the request and the reason."""


class Predictor:
    def __init__(self, model, processor: Florence2Processor, device: str | None = None, num_beams: int = 1,
                 max_new_tokens: int = 256, batch_size: int = 8, min_new_tokens: int = 0):
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.num_beams, self.max_new_tokens, self.batch_size = num_beams, max_new_tokens, batch_size
        self.min_new_tokens = min_new_tokens  # benchmarks force equal work per image
        tok = processor.tokenizer
        self._skip = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
        self._loc_ids = {tok.convert_tokens_to_ids(f"<loc_{i}>") for i in range(1000)}

    @classmethod
    def from_pretrained(cls, path, **kw) -> "Predictor":
        from florence2 import modeling

        model, proc = modeling.load(path)
        return cls(model, proc, **kw)

    def prepare(self, requests: list[Request]):
        """Validate every request before running any; returns (images, prompts, sizes)."""
        images, prompts, sizes = [], [], []
        for i, r in enumerate(requests):
            try:
                get_task(r.task)
                img = to_pil(r.image)
                prompts.append(build_prompt(r.task, r.text, r.region, img.size))
            except (TaskInputError, ImageInputError) as e:
                raise PredictionInputError(f"request {i} ({r.task}): {e}") from None
            images.append(img)
            sizes.append(img.size)
        return images, prompts, sizes

    def predict(self, requests: list[Request]) -> list[dict]:
        images, prompts, sizes = self.prepare(requests)
        out = []
        for s in range(0, len(requests), self.batch_size):
            sl = slice(s, s + self.batch_size)
            out += self._run(requests[sl], images[sl], prompts[sl], sizes[sl])
        return out

    def generate(self, images, prompts):
        """Token ids (without the decoder start token) and per-token log-probabilities."""
        import torch

        enc = self.processor.encode_prompts(prompts)
        dtype = next(self.model.parameters()).dtype
        pixels = torch.from_numpy(self.processor.preprocess(images)).to(self.device, dtype)
        with torch.inference_mode():
            g = self.model.generate(
                pixel_values=pixels, input_ids=torch.from_numpy(enc["input_ids"]).to(self.device),
                attention_mask=torch.from_numpy(enc["attention_mask"]).to(self.device),
                max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens or None, num_beams=self.num_beams, do_sample=False,
                output_scores=True, return_dict_in_generate=True, early_stopping=self.num_beams > 1)
            lp = self.model.compute_transition_scores(
                g.sequences, g.scores, getattr(g, "beam_indices", None), normalize_logits=self.num_beams == 1)
        return g.sequences[:, 1:].cpu().numpy(), lp.float().cpu().numpy()

    def _run(self, requests, images, prompts, sizes) -> list[dict]:
        seqs, logprobs = self.generate(images, prompts)
        tok = self.processor.tokenizer
        results = []
        for r, ids, lps, size in zip(requests, seqs, logprobs, sizes):
            keep, loc_lp, all_lp = [], [], []
            for t, lp in zip(ids.tolist(), lps.tolist()):
                if t == tok.eos_token_id:
                    break
                if t in self._skip:
                    continue
                keep.append(t)
                all_lp.append(lp)
                if t in self._loc_ids:
                    loc_lp.append(lp)
            text = tok.decode(keep, skip_special_tokens=False)
            task = get_task(r.task)
            parsed = parse_instances(text, task.parse_type, size)
            scores = None
            if task.parse_type != "pure_text":
                # k-th location token in the text is the k-th generated location token
                offsets = {m.start(): k for k, m in enumerate(LOC_RE.finditer(text))}
                scores = []
                for inst in parsed:
                    ks = [offsets.get(o) for o in _flat(inst["locs"])]
                    vals = [loc_lp[k] for k in ks if k is not None and k < len(loc_lp)]
                    scores.append(float(math.exp(sum(vals) / len(vals))) if vals else 0.0)
            results.append({"task": r.task, "text": text, "answer": format_answer(task.parse_type, parsed, scores),
                            "image_size": list(size),
                            # the whole answer's confidence: geometric mean of its tokens' probabilities
                            "score": float(math.exp(sum(all_lp) / len(all_lp))) if all_lp else 0.0})
        return results


def _flat(x):
    for v in x:
        if isinstance(v, (list, tuple)):
            yield from _flat(v)
        else:
            yield v


def one_by_one(predictor: Predictor, requests: list[Request]) -> list[dict]:
    """The baseline loop: one ``generate`` call per image."""
    return [predictor.predict([r])[0] for r in requests]
