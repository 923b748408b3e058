"""run_sft's console: a summary line every logging.sft_log_every steps, not one line per step
(896 lines for the tiny default before), while metrics.jsonl keeps every step."""

import logging

from aster.backend import select_backend
from aster.config import load_config
from aster.metrics import MetricsWriter, read_metrics
from aster.train.pipeline import make_context
from aster.train.sft import encode_dataset, run_sft
from tests.train._dist_worker import conversations


def test_sft_summarises_every_n_steps(tiny_model_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aster")
    cfg = load_config(None, ["sft.epochs=6", "sft.global_batch_size=2", "sft.micro_batch_size=2",
                             "logging.tensorboard=false", "logging.sft_log_every=5"])
    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    writer = MetricsWriter(tmp_path, tensorboard=False, progress=False,
                           summary_every=cfg.logging.sft_log_every)
    ctx = make_context(cfg, backend, str(tiny_model_dir), tmp_path, writer)
    data, _ = encode_dataset(ctx.tokenizer, conversations(4), 4096)
    run_sft(ctx, data)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[sft]")]
    assert [line.split()[2] for line in lines] == ["5/12", "10/12", "12/12"]
    assert [r["step"] for r in read_metrics(tmp_path) if r["stage"] == "sft"] == list(
        range(1, 13))
