"""The application, :class:`Chancy`: where jobs are pushed, read and administered.

Its parts, each a module of this package:

* :mod:`~chancy_core.app.chancy`: the :class:`Chancy` facade (options, plugins, the
  public API; each method a few lines over the parts below);
* :mod:`~chancy_core.app.database`: connections, the pools, the async and the sync driver
  that run every operation, and the one translation of database errors;
* :mod:`~chancy_core.app.twins`: how a method and its sync twin are made from one
  operation;
* :mod:`~chancy_core.app.pushing`: what push checks and which statement it uses;
* :mod:`~chancy_core.app.waiting`: waiting for jobs to finish;
* :mod:`~chancy_core.app.dsn`: where the DSN comes from, and masking its password.

The statements themselves are in the operations of :mod:`chancy_core.ops` and
:mod:`chancy_core.admin`.
"""

from chancy_core.app.chancy import Chancy
from chancy_core.app.dsn import DSN_ENV, mask_dsn
from chancy_core.app.pushing import COPY_MIN_JOBS

__all__ = ["COPY_MIN_JOBS", "DSN_ENV", "Chancy", "mask_dsn"]
