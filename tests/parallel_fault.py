"""`wdlab` with one injected fault on one rank, for tests/test_parallel.py.

    python tests/parallel_fault.py FAULT RANK STEP [--launch N] run WORKLOAD ...

FAULT is `kill` (the rank SIGKILLs itself as it starts writing the checkpoint of STEP, so
that checkpoint is never completed) or `error` (the rank's batch for STEP raises a user
error, as a node missing its data would). With `--launch N` this process starts N ranks
of itself through wdlab's own launcher (what `wdlab run --nproc N` does); without it, it is
one rank (started by torchrun) and runs `wdlab ARGS` after installing the fault.
"""

from __future__ import annotations

import os
import signal
import sys


def install(fault: str, rank: int, step: int) -> None:
    if int(os.environ.get("RANK", "0")) != rank:
        return
    if fault == "kill":
        import torch.distributed.checkpoint as dcp

        save = dcp.save

        def killing_save(state, *args, checkpoint_id=None, **kwargs):  # type: ignore[no-untyped-def]
            if f"ckpt-{step:08d}-" in str(checkpoint_id):
                os.kill(os.getpid(), signal.SIGKILL)
            return save(state, *args, checkpoint_id=checkpoint_id, **kwargs)

        dcp.save = killing_save
    elif fault == "error":
        from wdlab.errors import WdlabError
        from wdlab.workloads.charlm import CharLM

        batch = CharLM.batch

        def failing_batch(self, at):  # type: ignore[no-untyped-def]
            if at == step:
                raise WdlabError(
                    f"data shard missing on the node of rank {rank}; copy the data to every node"
                )
            return batch(self, at)

        CharLM.batch = failing_batch
    else:
        raise SystemExit(f"unknown fault {fault!r}")


def main() -> int:
    fault, rank, step, *rest = sys.argv[1:]
    if rest[:1] == ["--launch"]:
        from wdlab import parallel

        nproc, rest = int(rest[1]), rest[2:]
        return parallel.launch(nproc, [fault, rank, step, *rest], entry=[os.path.abspath(__file__)])
    install(fault, int(rank), int(step))
    from wdlab.cli import main as wdlab_main

    return wdlab_main(rest)


if __name__ == "__main__":
    sys.exit(main())
