"""torch.distributed.checkpoint (DCP) reads and writes of a model and its optimizer, shared by
the strategies that keep torch's own state-dict forms (none, ddp, fsdp2). DCP is imported in
each function: it costs about 0.5 s (DTensor's ops), which `aster --help` need not pay."""

from __future__ import annotations

import warnings
from contextlib import contextmanager


@contextmanager
def quiet():
    """DCP warns that it runs in one process whenever there is no process group: that is
    the single-process run, not a mistake."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*(disabled|unavailable)")
        yield


def dcp_state(model, optimizer) -> dict:
    """Model and optimizer state as DCP saves and loads it: canonical parameter names (no
    DDP `module.` prefix) and the tensors as the strategy holds them (FSDP2: DTensor shards),
    so the files are independent of the strategy and world size that wrote them."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optim_state}


def load_dcp(model, optimizer, directory) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    state = dcp_state(model, optimizer)
    with quiet():
        dcp.load(state, storage_reader=dcp.FileSystemReader(str(directory)))
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])


def read_full_state(directory) -> dict:
    """Every tensor of a DCP directory, read in full by this one process."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    with quiet():
        return _load_state_dict_from_keys(checkpoint_id=str(directory))
