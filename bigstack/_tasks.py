"""Running a list of dask tasks: on the active dask.distributed client, else locally."""

from __future__ import annotations


def active_client():
    """The active ``dask.distributed`` client, or None (also when distributed is missing).

    A client can only be active once ``distributed`` has been imported, so
    this never imports it (that alone costs about 0.2 s a process).
    """
    import sys

    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def compute(tasks, progress=False):
    """Compute ``tasks`` (a list of dask objects) and return their results in order.

    With an active client they run on its cluster (distributed's progress bar
    when ``progress``); otherwise on the local threaded scheduler.
    """
    import dask

    client = active_client()
    if client is None:
        if progress:
            from ._progress import progress_bar

            with progress_bar():
                return dask.compute(*tasks)
        return dask.compute(*tasks)
    futures = client.compute(tasks)
    if progress:
        from distributed import progress as show_progress

        show_progress(futures)
    return client.gather(futures)
