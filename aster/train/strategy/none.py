"""distributed.strategy=none: one process, the model as it is; the forward runs under
torch.autocast(compute dtype) over the fp32 masters (aster.algo.PolicyForward)."""

from aster.train.strategy import Strategy


class NoneStrategy(Strategy):
    name = "none"
