"""Only rank 0 logs to the console: under a launcher (RANK set) the other ranks print errors
only, so an 8-rank job shows each step line once."""

import os
import subprocess
import sys

SCRIPT = ("import logging; from aster.cli import setup_logging; setup_logging(False); "
          "log = logging.getLogger('aster'); log.info('step line'); log.warning('a warning'); "
          "log.error('an error')")


def _stderr(rank: str) -> str:
    env = {**os.environ, "RANK": rank, "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_rank_0_logs_info_and_up():
    err = _stderr("0")
    assert "INFO aster: step line" in err and "a warning" in err and "an error" in err


def test_other_ranks_log_errors_only_and_say_which_rank():
    err = _stderr("3")
    assert "step line" not in err and "a warning" not in err
    assert "ERROR aster [rank 3]: an error" in err
