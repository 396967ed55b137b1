"""One BLAS thread for the processes that run the NumPy recurrent steps.

The NumPy steps (`beam_rnn.stream.step`, `beam_rnn.serve.bidirectional`) are many small
matrix products ([rows, units] x [units, 4 units]).  OpenBLAS's thread pool makes them far
slower whenever the cores are shared — with TensorFlow's own threads in the same process,
other SDK worker processes on the VM, or anything else: on 2 busy cores a 64-row product took
16 ms with OpenBLAS's 2 threads and 30 µs with one, and `evaluate`'s early passes ran 8x
faster (benchmarks/blas_threads.py, RESULTS.md).  So the DoFns, the service and the
commands that run those steps call `limit_blas_threads` once per process (threadpoolctl: it
changes the limit of the BLAS libraries NumPy loaded, at run time; environment variables
only work before NumPy is imported).  Process-wide on purpose: a limit per call costs
~15 µs, about a whole step.
"""

import logging

BLAS_THREADS = 1
_applied = False


def limit_blas_threads(threads: int = BLAS_THREADS) -> None:
    """Limits NumPy's BLAS to `threads` threads in this process (first call only; no-op without threadpoolctl)."""
    global _applied  # pylint: disable=global-statement
    if _applied:
        return
    try:
        from threadpoolctl import threadpool_limits  # pylint: disable=import-outside-toplevel
    except ImportError:  # a dependency; a broken install only loses the speed
        logging.getLogger(__name__).debug("threadpoolctl is missing: BLAS threads not limited")
        return
    threadpool_limits(limits=threads, user_api="blas")
    _applied = True
