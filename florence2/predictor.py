"""Batched inference: (image, task, optional text or region) -> parsed answers with confidences.

Prompts are right-padded with a real attention mask (the original hub code
overwrote the mask with ones, so padded prompts attended to padding); batched
output therefore equals one-by-one output.  Each box, quad or polygon gets a
confidence: the geometric mean of the probabilities of its location tokens.

Greedy decoding runs its own loop over the model's forward (``fast=True``): the
image and the prompt are encoded once, each step feeds one token through the
decoder's KV cache, tokens and log-probabilities stay on the device, and the
host looks at them only every ``check_every`` steps, instead of ``generate``'s
per-token logits processors, stopping criteria and host syncs.  It applies the
same two rules ``generate`` applies here (``min_new_tokens``, and the forced
``</s>`` at ``max_new_tokens``), so its texts equal ``generate``'s.  Requests of
one batch that share an image (a model specialist asking about each of its
regions, or several tasks) share its decoding, resizing and vision tower.  Beam
search goes through ``generate``, which already encodes each image once for all beams.
On a GPU, images are decoded by CPU threads and resized/normalised on the device
(``preprocess="tensor"``); the CPU default stays PIL's.
"""
from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from florence2.locations import LOC_RE
from florence2.parsing import format_answer, parse_instances
from florence2.processing import Processor, ImageInputError, image_header, to_pil
from florence2.tasks import TaskInputError, build_prompt, get_task


@dataclass
class Request:
    image: Any                    # PIL image, encoded bytes, or HWC uint8 array
    task: str
    text: str | None = None
    region: tuple | None = None   # (x0, y0, x1, y1) in pixels


class PredictionInputError(ValueError):
    """A request that cannot be run; the message names the request and the reason."""


class PredictionTimeout(TimeoutError):
    """``predict``'s deadline passed; the work stopped at the next batch or decoding checkpoint."""


class Predictor:
    def __init__(self, model, processor: Processor, device: str | None = None, num_beams: int = 1,
                 max_new_tokens: int = 256, batch_size: int = 8, min_new_tokens: int = 0, fast: bool = True,
                 preprocess: str = "auto", decode_threads: int = 4, check_every: int | None = None,
                 formats: tuple[str, ...] | None = None, max_image_pixels: int | None = None,
                 share_images: bool = True):
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.num_beams, self.max_new_tokens, self.batch_size = num_beams, max_new_tokens, batch_size
        self.min_new_tokens = min_new_tokens  # benchmarks force equal work per image
        # how often the loop asks the device whether every row has finished: each ask is a host sync on a GPU
        self.fast, self.decode_threads = fast, decode_threads
        self.share_images = share_images  # False: each request decodes and encodes its image (benchmarks)
        self.check_every = check_every or (8 if self.device.startswith("cuda") else 1)
        if preprocess not in ("auto", "pil", "tensor"):
            raise ValueError(f"preprocess must be auto, pil or tensor, not {preprocess!r}")
        self.preprocess = preprocess if preprocess != "auto" else ("tensor" if self.device.startswith("cuda") else "pil")
        # what an untrusted caller may send (None: anything PIL opens, any size)
        self.formats, self.max_image_pixels = formats, max_image_pixels
        self.max_positions = model.config.text_config.max_position_embeddings
        tok = processor.tokenizer
        self._skip = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
        self._loc_ids = {tok.convert_tokens_to_ids(f"<loc_{i}>") for i in range(1000)}

    @classmethod
    def from_pretrained(cls, path, **kw) -> "Predictor":
        from florence2 import modeling

        model, proc = modeling.load(path)
        return cls(model, proc, **kw)

    def prepare(self, requests: list[Request]):
        """Validate every request before running any, from image headers only (nothing is decoded
        here); returns (images as given, prompts, sizes)."""
        tok = self.processor.tokenizer
        prompts, sizes = [], []
        for i, r in enumerate(requests):
            try:
                get_task(r.task)
                size, fmt = image_header(r.image)
                if self.formats is not None and fmt not in self.formats:
                    raise ImageInputError(f"{fmt or 'raw pixel'} images are not accepted (accepted: {', '.join(self.formats)})")
                if self.max_image_pixels and size[0] * size[1] > self.max_image_pixels:
                    raise ImageInputError(f"image is {size[0]}x{size[1]} = {size[0] * size[1]} pixels; "
                                          f"the limit is {self.max_image_pixels}")
                prompt = build_prompt(r.task, r.text, r.region, size)
            except (TaskInputError, ImageInputError) as e:
                raise PredictionInputError(f"request {i} ({r.task}): {e}") from None
            # the encoder's learned positions end somewhere: say so instead of an IndexError inside the model
            n = self.processor.num_image_tokens + len(tok(prompt, add_special_tokens=False).input_ids) + 2
            if n > self.max_positions:
                raise PredictionInputError(f"request {i} ({r.task}): the prompt is {n} tokens with the image's; "
                                           f"this model reads at most {self.max_positions}")
            prompts.append(prompt)
            sizes.append(size)
        return [r.image for r in requests], prompts, sizes

    def decode(self, images, numbers=None) -> list:
        """Images as given -> PIL images, in threads (decoding releases the GIL: threads keep up with a
        GPU); ``numbers``: each image's request number, for the error message (default 0, 1, ...)."""
        numbers = range(len(images)) if numbers is None else numbers

        def one(k_im):
            try:
                return to_pil(k_im[1])
            except ImageInputError as e:
                raise PredictionInputError(f"request {k_im[0]}: {e}") from None

        if self.decode_threads > 1 and len(images) > 1:
            with ThreadPoolExecutor(min(self.decode_threads, len(images))) as pool:
                return list(pool.map(one, zip(numbers, images)))
        return [one(x) for x in zip(numbers, images)]

    def predict(self, requests: list[Request], deadline_s: float | None = None, prepared=None) -> list[dict]:
        """Answers in request order.  Images are decoded one batch at a time; with ``deadline_s``,
        work stops (``PredictionTimeout``) at the first batch or decoding checkpoint past it.
        ``prepared``: what ``prepare(requests)`` returned, when the caller has checked them already."""
        import time

        images, prompts, sizes = prepared or self.prepare(requests)
        # per call, not on the instance: a served model answers concurrent requests with one predictor
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        out = []
        for s in range(0, len(requests), self.batch_size):
            sl = slice(s, s + self.batch_size)
            _check_deadline(deadline, f"after {s} of {len(requests)} requests")
            first, index = _shared(images[sl]) if self.share_images else (range(len(images[sl])), None)
            decoded = self.decode([images[s + k] for k in first], [s + k for k in first])
            out += self._run(requests[sl], decoded, prompts[sl], sizes[sl], deadline, index)
        return out

    def pixels(self, images):
        """Model-ready pixel values on the device, in the model's dtype."""
        import torch

        dtype = next(self.model.parameters()).dtype
        if self.preprocess == "tensor":
            return self.processor.preprocess_tensor(images, self.device).to(dtype)
        return torch.from_numpy(self.processor.preprocess(images)).to(self.device, dtype)

    def generate(self, images, prompts, deadline: float | None = None, index=None):
        """Token ids (without the decoder start token) and per-token log-probabilities, as numpy arrays.
        ``index``: the image of each prompt, by position in ``images`` (default: one image per prompt)."""
        import torch

        enc = self.processor.encode_prompts(prompts)
        pixels = self.pixels(images)
        ids = torch.from_numpy(enc["input_ids"]).to(self.device)
        mask = torch.from_numpy(enc["attention_mask"]).to(self.device)
        # every prompt with its own image: the plain path
        index = None if index is None or len(images) == len(prompts) else torch.as_tensor(index, device=self.device)
        if self.fast and self.num_beams == 1:
            tokens, lp = self._greedy(pixels, ids, mask, deadline, index)
            return tokens.cpu().numpy(), lp.cpu().numpy()
        if index is not None:
            pixels = pixels[index]
        with torch.inference_mode():
            g = self.model.generate(
                pixel_values=pixels, input_ids=ids, attention_mask=mask,
                max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens or None, num_beams=self.num_beams, do_sample=False,
                output_scores=True, return_dict_in_generate=True,
                # True stops at num_beams finished hypotheses: short wrong answers then beat a
                # long detection list still running (the Florence-2 model card uses False too)
                early_stopping=False)
            lp = self.model.compute_transition_scores(
                g.sequences, g.scores, getattr(g, "beam_indices", None), normalize_logits=self.num_beams == 1)
        return g.sequences[:, 1:].cpu().numpy(), lp.float().cpu().numpy()

    def _greedy(self, pixels, ids, mask, deadline: float | None = None, index=None):
        """(tokens, log-probabilities), both (B, steps) on the device; finished rows are padded.
        ``index`` (a tensor): the row of ``pixels`` each prompt reads, when prompts share images."""
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        model, gc = self.model, self.model.generation_config
        eos, pad = gc.eos_token_id, gc.pad_token_id
        forced_eos = getattr(gc, "forced_eos_token_id", None)
        b, cache_arg = ids.shape[0], _cache_arg()
        tokens, lps = [], []
        with torch.inference_mode():
            dec = torch.full((b, 1), gc.decoder_start_token_id, dtype=torch.long, device=ids.device)
            with torch.profiler.record_function("florence2.encode"):  # a label for profiles; free otherwise
                if index is None:
                    inputs = {"pixel_values": pixels, "input_ids": ids}
                else:  # each image through the vision tower once, its features placed at every prompt using it
                    feats = model.get_image_features(pixels).pooler_output[index]
                    embeds = model.get_input_embeddings()(ids)
                    where = (ids == model.config.image_token_id)[..., None]
                    inputs = {"inputs_embeds": embeds.masked_scatter(where, feats.to(embeds.dtype))}
                out = model(**inputs, attention_mask=mask, decoder_input_ids=dec, use_cache=True)
            encoded = BaseModelOutput(last_hidden_state=out.encoder_last_hidden_state)
            done = torch.zeros(b, dtype=torch.bool, device=ids.device)
            for t in range(self.max_new_tokens):
                logits = out.logits[:, -1].float()
                if t < self.min_new_tokens:
                    logits[:, eos] = -math.inf
                if forced_eos is not None and t == self.max_new_tokens - 1:
                    logits = torch.full_like(logits, -math.inf)
                    logits[:, forced_eos] = 0.0
                logp = torch.log_softmax(logits, -1)
                nxt = logits.argmax(-1)
                tokens.append(torch.where(done, pad, nxt))
                lps.append(logp.gather(1, nxt[:, None])[:, 0])
                done = done | (nxt == eos)
                # the only host sync: a few wasted steps beat a stall on every token
                if t == self.max_new_tokens - 1 or ((t + 1) % self.check_every == 0 and bool(done.all())):
                    break
                if (t + 1) % 16 == 0:
                    _check_deadline(deadline, f"while decoding {b} requests, at token {t + 1}")
                out = model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=nxt[:, None],
                            **{cache_arg: _cache_of(out)}, use_cache=True)
        return torch.stack(tokens, 1), torch.stack(lps, 1)

    def _run(self, requests, images, prompts, sizes, deadline: float | None = None, index=None) -> list[dict]:
        seqs, logprobs = self.generate(images, prompts, deadline, index)
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


def _shared(images) -> tuple[list[int], list[int]]:
    """(position of each distinct image's first request, each request's distinct image): equal encoded
    bytes are one image, as is one object (a PIL image, an array) passed twice."""
    seen, first, index = {}, [], []
    for k, im in enumerate(images):
        key = bytes(im) if isinstance(im, (bytes, bytearray, memoryview)) else id(im)
        if key not in seen:
            seen[key] = len(first)
            first.append(k)
        index.append(seen[key])
    return first, index


def _check_deadline(deadline: float | None, where: str) -> None:
    """``deadline``: a ``time.monotonic()`` instant, or None."""
    import time

    if deadline is not None and time.monotonic() > deadline:
        raise PredictionTimeout(f"the deadline passed {where}; work stopped")


@functools.cache
def _cache_arg() -> str:
    import inspect

    from transformers import Florence2ForConditionalGeneration

    # transformers renamed ``past_key_values`` to ``cache`` (5.2x); accept either
    return "cache" if "cache" in inspect.signature(Florence2ForConditionalGeneration.forward).parameters else "past_key_values"


def _cache_of(out):
    return out.cache if hasattr(out, "cache") and out.cache is not None else out.past_key_values



def _flat(x):
    for v in x:
        if isinstance(v, (list, tuple)):
            yield from _flat(v)
        else:
            yield v


def one_by_one(predictor: Predictor, requests: list[Request]) -> list[dict]:
    """The baseline loop: one ``generate`` call per image."""
    return [predictor.predict([r])[0] for r in requests]
