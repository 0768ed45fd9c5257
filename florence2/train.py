"""A plain training loop over (image, Example) pairs.

The distributed recipe (Horovod, Petastorm, MLflow, checkpoints, YAML config)
builds on this; here is the loop itself: batches of images, prompts and targets,
teacher-forced cross-entropy, AdamW with linear warm-up, nothing hidden.
"""
from __future__ import annotations

import random
import time

from florence2.tasks import build_prompt


def fit(model, processor, examples, steps: int, batch_size: int = 16, lr: float = 1e-3, warmup: int = 20,
        seed: int = 0, time_limit_s: float | None = None, log=print, log_every: int = 50) -> dict:
    """Train on ``examples`` [(PIL image, targets.Example)] for ``steps`` (or until ``time_limit_s``)."""
    import torch

    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)))
    model.train()
    t0, losses, order = time.time(), [], []
    step = 0
    for step in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        idx, order = order[:batch_size], order[batch_size:]
        batch = [examples[i] for i in idx]
        inputs = processor.batch([img for img, _ in batch],
                                 [build_prompt(e.task, e.text, e.region, img.size) for img, e in batch],
                                 [e.target for _, e in batch])
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        loss = model(**inputs).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss))
        if log and (step % log_every == 0 or step == steps - 1):
            log(f"[train] step {step}/{steps} loss {losses[-1]:.4f} ({time.time() - t0:.0f}s)")
        if time_limit_s and time.time() - t0 > time_limit_s:
            break
    model.eval()
    return {"steps": step + 1, "final_loss": losses[-1] if losses else None, "seconds": time.time() - t0,
            "examples_per_s": (step + 1) * batch_size / max(time.time() - t0, 1e-9)}
