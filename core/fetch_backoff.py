"""Shorter retries where Flower fetches a message's data before it has arrived, and has no setting for it.

A message travels as a header and its objects (the arrays), uploaded after
the header. Flower makes the header visible first: a SuperNode creates the
ClientApp's task before it has pulled the objects from the SuperLink
(``flwr/supernode/start_client_internal.py``, ``_pull_and_store_message``),
and the SuperLink hands a reply to the ServerApp before the SuperNode has
pushed its objects. A fetch that comes early misses, and Flower's default
backoff then waits 1 s, 2 s, 4 s ... up to 10 s (``PULL_INITIAL_BACKOFF``,
``PULL_BACKOFF_CAP`` in ``flwr/supercore/constant.py``), bound as default
arguments when Flower's modules load. With every message of a 30-s cadence
arriving at once, those waits were seconds of each reply's latency
(``benchmarks/fl_supernodes.py``).

:func:`shorten` rebinds one Flower module's fetch function with a short
backoff, in the calling process (and the processes it forks) only. It is used
by the ClientApp executor (``clients/executor.py``: its children fetch from a
SuperNode on this machine) and the ServerApp (replies, from the SuperLink).
The SuperNodes keep Flower's backoff for their fetches from the SuperLink:
shortened there too, 53 SuperNodes retrying every 0.05-0.5 s while the
ServerApp was still uploading a tick's messages slowed the SuperLink down:
the ServerApp's upload of a tick's 53 messages took a median 4.7 s (10 ticks)
against 0.9 s (6 ticks) with Flower's backoff in the SuperNodes.
"""

from __future__ import annotations

import functools
import importlib
import logging

log = logging.getLogger(__name__)

BACKOFF = (0.05, 0.5)  # seconds: the first wait, the longest wait
# (module, the name it calls Flower's object fetch by): where the two fetches above happen.
CLIENTAPP_FETCH = ("flwr.supernode.runtime.run_clientapp", "pull_and_inflate_object_from_tree")  # from its SuperNode
SERVERAPP_FETCH = ("flwr.superlink.grid.http_grid", "pull_objects")  # replies, from the SuperLink


def shorten(where: tuple[str, str], backoff: tuple[float, float] = BACKOFF) -> bool:
    """Give the fetch named by ``where`` the backoff ``backoff``; True if it has it now.

    False, with a warning, if Flower's code has changed shape (Flower's defaults then stay).
    """
    module_name, name = where
    module = importlib.import_module(module_name)
    fetch = getattr(module, name, None)
    if isinstance(fetch, functools.partial):  # done before in this process
        return True
    if fetch is None:
        log.warning("%s.%s not found: Flower's default fetch backoff (1-10 s) stays", module_name, name)
        return False
    setattr(module, name, functools.partial(fetch, initial_backoff=backoff[0], backoff_cap=backoff[1]))
    return True
