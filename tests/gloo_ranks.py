"""A pool of CPU processes joined in one gloo process group, for testing code that runs on every rank.

`GlooRanks(world_size)` starts one process per rank once (torch and our imports cost seconds per process) and
`run(fn, *args)` calls the module-level function `fn(rank, *args)` on every rank at once, returning the results in
rank order. A rank that raises fails the call with its traceback; ranks that do not all answer within `timeout`
seconds -- a collective that hangs -- fail it too, and the pool is restarted for the next call.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
import tempfile
import traceback


def _join_group(rank: int, world_size: int, init_file: str) -> None:
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)


def _call(fn, rank, args):
    try:
        return fn(rank, *args)
    except BaseException:  # noqa: BLE001 -- the traceback text survives pickling, the frames would not
        raise RuntimeError(f"rank {rank}:\n{traceback.format_exc()}") from None


class GlooRanks:
    def __init__(self, world_size: int = 2, timeout: float = 90.0, startup_timeout: float = 600.0):
        self.world_size, self.timeout, self.startup_timeout = world_size, timeout, startup_timeout
        self._pools: list[futures.ProcessPoolExecutor] = []

    def _start(self) -> None:
        init_file = tempfile.mktemp(prefix="gloo-init-")  # must not exist yet: the group creates it
        context = multiprocessing.get_context("spawn")
        self._pools = [futures.ProcessPoolExecutor(1, mp_context=context, initializer=_join_group,
                                                   initargs=(rank, self.world_size, init_file))
                       for rank in range(self.world_size)]
        # Starting a rank (spawn, import torch, join the group) can take minutes on a loaded machine: it gets its
        # own allowance, so `timeout` measures the call alone and still catches a collective that hangs.
        joined = [pool.submit(os.getpid) for pool in self._pools]
        _, not_joined = futures.wait(joined, timeout=self.startup_timeout)
        if not_joined:
            self.close()
            raise TimeoutError(f"ranks {[joined.index(f) for f in not_joined]} did not start and join the gloo "
                               f"group within {self.startup_timeout:.0f} s")

    def run(self, fn, *args, timeout: float | None = None) -> list:
        """`timeout` (default: the pool's) for a call that first imports something heavy (composer: minutes on a
        loaded machine)."""
        if not self._pools:
            self._start()
        timeout = self.timeout if timeout is None else timeout
        pending = [pool.submit(_call, fn, rank, args) for rank, pool in enumerate(self._pools)]
        done, not_done = futures.wait(pending, timeout=timeout)
        if not_done:
            self.close()
            raise TimeoutError(f"{fn.__name__}: ranks {[pending.index(f) for f in not_done]} did not finish within "
                               f"{timeout:.0f} s (a collective that some rank never joined?)")
        return [future.result() for future in pending]

    def close(self) -> None:
        for pool in self._pools:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()  # a rank stuck in a collective never returns to shut down cleanly
            pool.shutdown(wait=False, cancel_futures=True)
        self._pools = []
