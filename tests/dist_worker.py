"""One rank of a test of csdfd.distributed (started by tests/test_distributed.py, and run in
process by it for the single-process side).

    python tests/dist_worker.py SPEC.json

SPEC: {"cfg": {...}, "runs": [{"out", "resume", "stop_after"}], "dump": DIR,
       "bad": [rank, global_step] | null, "die": [rank, global_step] | null}
Each run dumps DIR/<run index>-rank<r>.pt: the step-0 reduced rows and op output, the final
parameters, the skip count, and the evaluation metrics, sharded and in one process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def run(spec: dict) -> None:
    from csdfd.config import resolve
    from csdfd.inference import evaluate_sets
    from csdfd.trainer import Trainer

    cfg = resolve(spec["cfg"])
    for i, r in enumerate(spec["runs"]):
        tr = Trainer(cfg, r["out"], resume=r.get("resume"), quiet=True)
        capture = _instrument(tr, spec.get("bad"), spec.get("die"))
        tr.fit(r.get("stop_after"))
        args = (cfg.img_size, cfg.eval_batch_size, cfg.amp, cfg.channels_last)
        dump = {**capture, "params": [p.detach().clone() for p in tr.model.parameters()],
                "skipped": tr.skipped, "eval_sharded": tr.dp.evaluate_sets(tr.model,
                                                                          tr.eval_sets, *args),
                "eval_single": evaluate_sets(tr.model, tr.eval_sets, *args)}
        torch.save(dump, Path(spec["dump"]) / f"{i}-rank{tr.dp.rank}.pt")
    tr.dp.close()


def _instrument(tr, bad, die) -> dict:
    """Record step 0's reduced rows and op output; fake a non-finite step or a dead rank."""
    capture: dict = {}
    step, op = tr._step, tr.fg.step

    def fg_step(*a, **kw):
        first = tr.global_step == 0 and "rows" not in capture
        if first:
            capture["rows"] = tr.fg.buf.clone()
        stats = op(*a, **kw)
        if first:
            capture["out"] = tr.fg.buf[0].clone()
        return stats

    def wrapped(batch):
        if die is not None and [tr.dp.rank, tr.global_step] == die:
            os._exit(3)
        losses, stats, norm, is_bad = step(batch)
        if bad is not None and [tr.dp.rank, tr.global_step] == bad:
            is_bad = torch.tensor(True)  # a rank-local non-finite verdict
        return losses, stats, norm, is_bad

    tr.fg.step, tr._step = fg_step, wrapped
    return capture


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
