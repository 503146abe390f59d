"""Running a list of dask tasks: on the active dask.distributed client, else locally."""

from __future__ import annotations


def active_client():
    """The active ``dask.distributed`` client, or None (also when distributed is missing)."""
    try:
        from distributed import default_client
    except ImportError:
        return None
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
