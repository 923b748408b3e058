"""The sharded-checkpoint tests' runner (tests/train/test_sharded_checkpoint.py).

    python _ckpt_worker.py OUT_DIR MODEL_DIR [PHASE,...]   (default: every phase, in order)

Imports once, then forks each phase's ranks (FSDP2 over gloo; one rank is strategy none):

- whole/     2 ranks, 4 SFT steps, a checkpoint after every step
- cut/       the same run, killed right after the step-2 checkpoint
- resume-W/  a copy of cut/ resumed on W = 2, 1 and 4 ranks to the end
- bytes/     2 fresh ranks load cut/'s step-2 checkpoint (rank<R>.json: the bytes the rank
             read meanwhile, and the checkpoint's bytes in all)
- buckets/   2 fresh FSDP2 ranks in bf16 compute stream their weights (weight_buckets) and
             compare them with the gathered state (rank<R>.json)

Each run's rank 0 writes result.json (the SFT steps' metrics from metrics.jsonl).
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[2]))  # run as a script: `tests` importable

from tests.train._dist_worker import conversations  # noqa: E402

CUT_AFTER = 2
BUCKET = 100_000  # bytes: several buckets of the tiny model's bf16 weights
# 8 conversations, 4 per step, 2 epochs: 4 steps; 4 per step splits over 1, 2 and 4 ranks
OVERRIDES = ["sft.epochs=2", "sft.global_batch_size=4", "sft.micro_batch_size=1",
             "sft.warmup_ratio=0", "sft.lr=1e-3", "sft.lr_schedule=cosine",
             "sft.save_every_steps=1", "checkpoint.keep_last=4", "logging.tensorboard=false",
             "distributed.strategy=fsdp2"]


class Cut(Exception):
    """The stand-in for a kill right after a checkpoint."""


def context(backend, rank: int, out: Path):
    from aster.config import load_config
    from aster.metrics import MetricsWriter
    from aster.train.pipeline import make_context

    cfg = load_config(None, OVERRIDES)
    return make_context(cfg, backend, os.environ["ASTER_TEST_MODEL"], out,
                        MetricsWriter(out, is_main=rank == 0, tensorboard=False))


def train(backend, rank: int, out: Path, cut: bool) -> None:
    """Run (or resume) the SFT stage in `out`; with `cut`, stop after step CUT_AFTER's
    checkpoint as a killed run would."""
    from aster.metrics import read_metrics
    from aster.train import sft

    ctx = context(backend, rank, out)
    data, _ = sft.encode_dataset(ctx.tokenizer, conversations(8), 1024)
    real = sft.save_checkpoint

    def save_then_die(ckpt_dir, step, **kwargs):
        path = real(ckpt_dir, step, **kwargs)
        if step == CUT_AFTER:
            raise Cut(path)
        return path

    sft.save_checkpoint = save_then_die if cut else real
    try:
        sft.run_sft(ctx, data)
    except Cut:
        pass
    finally:
        sft.save_checkpoint = real
    if rank == 0:
        steps = [m for m in read_metrics(out) if m["stage"] == "sft"]
        (out / "result.json").write_text(json.dumps(steps))


def count_reads(backend, rank: int, out: Path, ckpt: Path) -> None:
    """Load `ckpt` into a fresh model and optimizer through DCP's file reader, counting the
    bytes of every stored chunk the rank reads (any format: "total" is every file's bytes)."""
    import torch.distributed.checkpoint as dcp

    from aster.train.checkpoint import load_checkpoint
    from aster.train.common import build_optimizer

    read = {"bytes": 0}

    class CountingReader(dcp.FileSystemReader):
        def _slice_file(self, file, sinfo):
            read["bytes"] += sinfo.length
            return super()._slice_file(file, sinfo)

    ctx = context(backend, rank, out)
    optimizer = build_optimizer(ctx.policy, 1e-3, 0.0)
    real, dcp.FileSystemReader = dcp.FileSystemReader, CountingReader
    try:
        load_checkpoint(ckpt, model=ctx.policy, optimizer=optimizer)
    finally:
        dcp.FileSystemReader = real
    total = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    (out / f"rank{rank}.json").write_text(json.dumps({"read": read["bytes"], "total": total}))


def stream_weights(backend, rank: int, out: Path) -> None:
    """FSDP2's weight stream in bf16 against the gathered fp32 state: every weight, in full,
    in buckets of at most BUCKET bytes (a larger tensor alone)."""
    from aster.config import load_config
    from aster.metrics import MetricsWriter
    from aster.train.pipeline import make_context
    from aster.train.strategy import full_state_dict

    cfg = load_config(None, [*OVERRIDES, "model.dtype=bfloat16"])
    ctx = make_context(cfg, backend, os.environ["ASTER_TEST_MODEL"], out,
                       MetricsWriter(out, is_main=rank == 0, tensorboard=False))
    full = full_state_dict(ctx.hf_model)  # rank 0's
    buckets = list(ctx.strategy.weight_buckets(BUCKET))
    sizes = [sum(t.numel() * t.element_size() for _, t in b) for b in buckets]
    stream = {n: t for b in buckets for n, t in b}
    result = {"strategy": ctx.strategy.name, "buckets": len(buckets),
              "over": sum(s > BUCKET and len(b) > 1 for s, b in zip(sizes, buckets)),
              "names": list(stream) == list(full) if rank == 0 else True,
              "dtypes": sorted({str(t.dtype) for t in stream.values()}),
              "equal": all(torch.equal(stream[n], full[n].bfloat16()) for n in full)}
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def rank_main(rank, world, port, phase, out, ckpt):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from aster.backend import select_backend

    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    backend.init_distributed()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if phase == "bytes":
        count_reads(backend, rank, out, Path(ckpt))
    elif phase == "buckets":
        stream_weights(backend, rank, out)
    else:
        train(backend, rank, out, cut=phase == "cut")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main(out_dir: str, model_dir: str, only: list[str] | None = None) -> int:
    import aster.train.pipeline  # noqa: F401 - the imports the forked ranks inherit
    from tests.train.ranks import fork_ranks, free_port

    os.environ["ASTER_TEST_MODEL"] = model_dir
    out = Path(out_dir)
    step = out / "cut" / "checkpoints" / "sft" / f"step-{CUT_AFTER:08d}"
    phases = [("whole", 2), ("cut", 2), ("resume-2", 2), ("resume-1", 1), ("resume-4", 4),
              ("bytes", 2), ("buckets", 2)]
    for phase, world in phases:
        if only and phase not in only:
            continue
        t0 = time.perf_counter()
        if phase.startswith("resume"):
            shutil.copytree(out / "cut", out / phase)
        code = fork_ranks(rank_main, world, free_port(), phase, str(out / phase), str(step))
        print(f"{phase} on {world}: {time.perf_counter() - t0:.1f}s", flush=True)
        if code:
            return code
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)  # one thread: no OpenMP pool exists when the ranks fork
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3].split(",") if sys.argv[3:] else None))
