"""distributed.strategy=ddp: every rank holds the whole fp32 model, DistributedDataParallel
averages gradients; the forward runs under torch.autocast(compute dtype) as under none."""

from torch.nn.parallel import DistributedDataParallel

from aster.train.strategy import Strategy


class DDPStrategy(Strategy):
    name = "ddp"

    def _wrap(self, policy):
        device = self.backend.device()
        ids = None if device.type == "cpu" else [device.index]
        return DistributedDataParallel(policy, device_ids=ids)
