"""pytest fixture ``slurm_cluster``: a real single-node SLURM cluster.

Use it from a test module or conftest with either::

    from slurm_fixtures import slurm_cluster  # noqa: F401  (re-export)

or::

    pytest_plugins = ["slurm_fixtures"]

(``tests/`` must be importable, which it is with pytest's default rootdir
conftest/rootdir insertion of the test file's directory into sys.path.)

The fixture is session-scoped and yields a started
:class:`slurm_cluster.SlurmCluster`; use ``cluster.env`` (SLURM_CONF, PATH)
for every slurm/snakemake subprocess, ``cluster.run([...], timeout=...)``,
``cluster.sbatch(...)``, ``cluster.wait_job(jobid)``, and
``cluster.write_snakemake_profile(dir)`` for a working snakemake profile.

It skips (never fails) when the cluster cannot exist here: not root, or the
Debian packages slurmctld/slurmd/slurm-client/munge are missing and cannot be
installed (it runs tests/install_slurm.sh when root with apt-get, unless
SLURM_HARNESS_NO_INSTALL=1).  When the packages are there but the daemons do
not come up, that is a test *error* carrying the daemons' log tails.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slurm_cluster as _sc  # noqa: E402


def slurm_skip_reason() -> str | None:
    """Why a slurm cluster cannot be run here (None if it can)."""
    if sys.platform != "linux":
        return "the slurm test cluster needs Linux"
    if os.geteuid() != 0:
        return "the slurm test cluster must run as root (SlurmUser=root)"
    if not _sc.missing_binaries():
        return None
    pkgs = " ".join(_sc.missing_packages())
    if os.environ.get("SLURM_HARNESS_NO_INSTALL"):
        return f"slurm packages missing ({pkgs}) and SLURM_HARNESS_NO_INSTALL is set"
    ok, msg = _sc.try_install()
    if ok:
        return None
    return f"slurm packages missing ({pkgs}) and could not be installed: {msg}"


# One cluster per test session, however many modules import the fixture: pytest makes a
# separate session fixture for each module that imports it (and one for pytest_plugins), and
# a second cluster could not take /etc/slurm/slurm.conf while the first is up.
_SHARED: dict = {"cluster": None, "users": 0}


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A started single-node slurm cluster (2 fake GPUs, partition 'debug')."""
    reason = slurm_skip_reason()
    if reason:
        pytest.skip(reason)
    if _SHARED["cluster"] is None:
        cluster = _sc.SlurmCluster(tmp_path_factory.mktemp("slurm"))
        try:
            cluster.start()  # raises SlurmHarnessError with log tails on failure
        except BaseException:
            cluster.stop()
            raise
        _SHARED["cluster"] = cluster
    cluster = _SHARED["cluster"]
    _SHARED["users"] += 1
    try:
        yield cluster
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:
            _SHARED["cluster"] = None
            cluster.stop()
